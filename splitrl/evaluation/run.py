"""`splitrl-eval`: every policy on the same held-out scenarios -> tables (CSV, JSON, Markdown) and plots.

Four parts, top to bottom: the rollout (one module-level jitted function; common random numbers),
the statistics (per seed, then mean and a 95 % t-interval over seeds), the writers (tables, claims
table, plots) and a thin `@hydra.main`.

Common random numbers: the env's keys depend only on (scenario, seed, episode), never on the
policy, so every policy meets the same bandwidth, fading, cloud load, requests and arrivals (the
channel and the workload are exogenous: actions move only the queues). Policies draw from a separate
key stream. Every number in the tables is computed from the env's `info` (latency, energy,
delta_ppl, backlog, objective, ...): nothing is recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
import zlib
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from splitrl.baselines import ScenarioSpec, Trained, make_baseline
from splitrl.baselines.dpp import BatteryDPP, HeatDPP
from splitrl.env import rollout as R
from splitrl.evaluation.plots import plot_all
from splitrl.evaluation.report import claims, claims_markdown, comparison_markdown, fmt_number, write_tables
from splitrl.evaluation.stats import LABELS, add_paired, seed_stats, summarise
from splitrl.resources import config_dir
from splitrl.training.rundir import RunDir, RunDirError

CONF_DIR = str(config_dir())
# info entries recorded per slot (all f32 scalars of the env's info)
RECORD = ("latency", "energy", "delta_ppl", "backlog", "objective", "served", "arrivals", "drops", "failed",
          "request_failed", "timed_out", "fell_back", "response_time", "cloud_wait", "connected", "bandwidth",
          "boundary", "fmt", "edge_frac", "bytes_sent", "temp_c", "edge_speed",
          "migration_s", "migration_bytes", "soc")


# ----------------------------------------------------------------------------- rollout
TRAIN_SEED0 = 1000   # training episodes, for tuning a baseline: seeds TRAIN_SEED0, +1, ... (never evaluated)
TUNE_SEEDS = 2       # ... how many a single-device baseline is tuned on


def episode_keys(scenario: str, seed: int, n_episodes: int) -> tuple[jax.Array, jax.Array]:
    """(env keys [N], policy keys [N]) of a scenario's episodes for one seed. The env keys depend only
    on (scenario, seed, episode): every policy meets the same randomness (common random numbers)."""
    root = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(scenario.encode()) & 0x7FFFFFFF)
    env_root, pol_root = jax.random.split(root)
    eps = jnp.arange(n_episodes)
    return (jax.vmap(lambda e: jax.random.fold_in(env_root, e))(eps),
            jax.vmap(lambda e: jax.random.fold_in(pol_root, e))(eps))


@partial(jax.jit, static_argnames=("env", "policy", "n_steps"))
def rollout(env, policy, env_params, pparams, env_keys, policy_keys, n_steps: int) -> dict[str, jax.Array]:
    """Episodes of `policy` in `env` (no auto-reset; one per key of the leading axis N), through the one
    rollout loop (splitrl.env.rollout). Step t of episode e steps the env with fold_in(env root e, t) and
    the policy with fold_in(policy root e, t). Returns {info key: f32[N, n_steps]} for RECORD plus
    "reward". Compiled once per (env structure, policy, n_steps): params, policy params and keys are data."""
    reset_keys, env_roots = jax.vmap(jax.random.split)(env_keys).transpose(1, 0, 2)
    fold = jax.vmap(jax.random.fold_in, (0, None))

    k = getattr(policy, "lookahead", 0)

    def act(obs, state, pol_keys, step_keys):   # the oracles read the env's step keys; no one else does
        if k:   # the MPC oracle: this slot's key and the next k − 1 (an episode's slot t is state.time)
            step_keys = jax.vmap(lambda root, t: jnp.stack([jax.random.fold_in(root, t + i) for i in range(k)]))(
                env_roots, state.time)
        return jax.vmap(policy, (None, 0, 0, 0, None, 0))(pparams, pol_keys, obs, state, env_params, step_keys), None

    def record(s: R.Step) -> dict:
        return {k: jnp.asarray(s.info[k], jnp.float32) for k in RECORD} | {"reward": s.reward}

    carry = R.start(env, env_params, reset_keys, reset="reset_env")
    _, out = R.rollout(env, env_params, act, carry, jnp.arange(n_steps),
                       lambda t: (fold(policy_keys, t), fold(env_roots, t)), record, auto_reset=False)
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), out)   # [T, N] -> [N, T]


# ----------------------------------------------------------------------------- statistics
# ----------------------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    policies: tuple[str, ...]   # baseline names (splitrl.baselines.BASELINES)
    runs: tuple[str, ...]       # splitrl-train run dirs (HPPO, flat PPO): evaluated on their scenario
    scenarios: tuple[str, ...]  # splitrl/conf/scenario names or YAML paths
    seeds: int                  # seeds (CI over seeds)
    episodes: int               # episodes per seed
    steps: int                  # slots per episode (0: the scenario's episode length)
    splitllm_sla_factor: float  # SplitLLM's SLA = this x the scenario's typical latency
    chen_lam: float             # Chen et al.'s UE-cost weight λ
    chen_timesteps: int         # PPO env steps to train Chen et al.'s agent per scenario
    plot_policies: tuple[str, ...]  # policies drawn in the partition-over-time plot (empty: all)
    heat_dpp_margins: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)   # heat_dpp's margins (K): the best on training episodes is evaluated
    battery_dpp_reserves_j: tuple[float, ...] = (0.0, 2.0, 3.0, 4.0, 6.0, 8.0)   # battery_dpp's reserves (J a slot): likewise


def scenario_spec(name: str) -> tuple[Any, Any, ScenarioSpec]:
    from splitrl.env.scenario import load_scenario_dict, make_with_info
    env, params, info = make_with_info(name)
    data, _ = load_scenario_dict(name)
    return env, params, ScenarioSpec(name=Path(name).stem, data=data, info=info)


def evaluate(cfg: EvalConfig, log=print) -> tuple[list[dict], dict]:
    """Rows (one per evaluated (policy, scenario)) and raw per-slot outputs {(scenario, policy): {k: [S, N, T]}}."""
    rows, raw = [], {}
    trained = [Trained.from_run_dir(r) for r in cfg.runs]
    _check_runs_have_scenarios(cfg, trained)
    for scen in cfg.scenarios:
        env, params, spec = scenario_spec(scen)
        n_steps = cfg.steps or int(params.max_steps_in_episode)
        # heat_dpp only where the edge heats, battery_dpp only on a battery (elsewhere each is myopic DPP, a row twice)
        policies = [make_baseline(n, **_baseline_kwargs(n, cfg)) for n in cfg.policies
                    if (n != "heat_dpp" or env.heat) and (n != "battery_dpp" or env.battery)]
        policies += [t for t in trained if t.scenario_id() == spec.info.id]
        for policy in policies:
            policy = policy.bind(env, params)
            t0 = time.perf_counter()
            pparams = policy.init(env, params, spec, jax.random.PRNGKey(0))
            tuned = {}
            if isinstance(policy, HeatDPP):   # (only in an env that heats, above)
                pparams, tuned = tune_heat_margin(env, policy, params, pparams, spec.name, cfg, n_steps)
            if isinstance(policy, BatteryDPP):   # (only on a battery, above)
                pparams, tuned = tune_battery_reserve(env, policy, params, pparams, spec.name, cfg, n_steps)
            t_init = time.perf_counter() - t0
            per_seed, outs = [], []
            # a run trained with several seeds: evaluation seed s runs training seed s mod n, so the
            # interval covers the training's spread as well as the episodes'
            n_members = policy.seed_members() if isinstance(policy, Trained) else 1
            loaded = {getattr(policy, "member", 0): pparams}   # each member read once, the first already is
            for seed in range(cfg.seeds):
                if n_members > 1:
                    m = seed % n_members
                    if m not in loaded:
                        loaded[m] = dataclasses.replace(policy, member=m).init(env, params, spec)
                    pparams = loaded[m]
                ek, pk = episode_keys(spec.name, seed, cfg.episodes)
                out = jax.device_get(rollout(env, policy, params, pparams, ek, pk, n_steps))
                per_seed.append(seed_stats(out))
                outs.append(out)
            raw[spec.name, policy.name] = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
            row = {"scenario": spec.name, "policy": policy.name, "model": spec.info.model, "edge": spec.info.edge,
                   "edge_fits": bool(params.costs.boundary_mask[-1]), "seeds": cfg.seeds, "episodes": cfg.episodes,
                   "steps": n_steps, "train_seeds": n_members} | tuned | summarise(per_seed)
            rows.append(row)
            log(f"{spec.name:40s} {policy.name:15s} objective {row['objective']:8.4f} ± {row['objective_ci']:.4f}  "
                f"latency {row['latency_mean']:8.3f} s  p95 {row['latency_p95']:8.3f}  ({t_init:.1f} s init, "
                f"{time.perf_counter() - t0 - t_init:.1f} s eval)")
    return rows, raw


def tune_on_training_episodes(env, policy, params, pparams, key: str, grid, scenario: str, cfg: EvalConfig,
                              n_steps: int) -> tuple[dict, float, dict]:
    """The value of `pparams[key]` in `grid` with the least mean objective on training episodes (seeds
    TRAIN_SEED0, +1: never evaluated), like a user would tune it: (params with it, it, {value: objective})."""
    scores = {}
    for v in grid:
        trial = pparams | {key: jnp.float32(v)}
        objs = [float(rollout(env, policy, params, trial, *episode_keys(scenario, TRAIN_SEED0 + s, cfg.episodes),
                              n_steps)["objective"].mean()) for s in range(TUNE_SEEDS)]
        scores[float(v)] = float(np.mean(objs))
    best = min(scores, key=scores.get)
    return pparams | {key: jnp.float32(best)}, best, scores


def tune_heat_margin(env, policy, params, pparams, scenario: str, cfg: EvalConfig, n_steps: int):
    """heat_dpp's margin, tuned on training episodes over `cfg.heat_dpp_margins`: the params with it and
    {"heat_margin_c": it, "heat_margin_scores": {margin: objective}} for the row."""
    pparams, best, scores = tune_on_training_episodes(env, policy, params, pparams, "margin", cfg.heat_dpp_margins,
                                                      scenario, cfg, n_steps)
    return pparams, {"heat_margin_c": best, "heat_margin_scores": scores}


def tune_battery_reserve(env, policy, params, pparams, scenario: str, cfg: EvalConfig, n_steps: int):
    """battery_dpp's reserve, tuned on training episodes over `cfg.battery_dpp_reserves_j`: the params with it
    and {"battery_reserve_j": it, "battery_reserve_scores": {reserve: objective}} for the row."""
    pparams, best, scores = tune_on_training_episodes(env, policy, params, pparams, "reserve_j",
                                                      cfg.battery_dpp_reserves_j, scenario, cfg, n_steps)
    return pparams, {"battery_reserve_j": best, "battery_reserve_scores": scores}


def _check_runs_have_scenarios(cfg: EvalConfig, trained: list) -> None:
    """A run is evaluated on the scenario it was trained on: that scenario must be among `scenarios`."""
    from splitrl.config import ConfigError
    from splitrl.env.scenario import load_scenario_dict
    ids = {load_scenario_dict(s)[0].get("id") for s in cfg.scenarios}
    for run, t in zip(cfg.runs, trained, strict=True):
        if t.scenario_id() not in ids:
            raise ConfigError(f"config runs: {run} was trained on scenario id {t.scenario_id()!r}, which none of "
                              f"scenarios = {list(cfg.scenarios)} is; add its scenario (the name or YAML path it was "
                              "trained with) to scenarios")


def _baseline_kwargs(name: str, cfg: EvalConfig) -> dict:
    if name == "splitllm_dp":
        return {"sla_factor": cfg.splitllm_sla_factor}
    if name == "chen_ppo":
        return {"lam": cfg.chen_lam, "total_timesteps": cfg.chen_timesteps}
    return {}


# ----------------------------------------------------------------------------- writers
# ----------------------------------------------------------------------------- Hydra
def typed_config(data: dict) -> EvalConfig:
    from splitrl.config import ConfigError, build
    data = dict(data)
    for k in ("policies", "runs", "scenarios", "plot_policies"):
        if not isinstance(data.get(k, ()), list | tuple):
            raise ConfigError(f"config {k} = {data.get(k)!r}: must be a list")
        data[k] = tuple(data.get(k) or ())
    for k, unit, eg in (("heat_dpp_margins", "K", "[0, 1, 2, 4, 8]"), ("battery_dpp_reserves_j", "J a slot", "[0, 2, 3, 4, 6, 8]")):
        if k in data:
            grid = data[k]
            if (not isinstance(grid, list | tuple) or not grid
                    or not all(isinstance(m, int | float) and not isinstance(m, bool) and math.isfinite(m) for m in grid)):
                raise ConfigError(f"config {k} = {grid!r}: must be a non-empty list of numbers ({unit}), e.g. {eg}")
            data[k] = tuple(float(m) for m in grid)
    cfg = build(EvalConfig, data, "eval")
    from splitrl.baselines import BASELINES
    unknown = [p for p in cfg.policies if p not in BASELINES]
    if unknown:
        raise ConfigError(f"config policies: {unknown} unknown; baselines are {sorted(BASELINES)}; trained policies "
                          "go in runs (splitrl-train run dirs)")
    for r in cfg.runs:
        try:
            RunDir.read(r)
        except RunDirError as e:
            raise ConfigError(f"config runs: {e}") from e
    if cfg.seeds < 1 or cfg.episodes < 1 or cfg.steps < 0:
        raise ConfigError(f"config seeds = {cfg.seeds}, episodes = {cfg.episodes}, steps = {cfg.steps}: need >= 1, >= 1, >= 0")
    return cfg


def run(cfg: EvalConfig, out_dir: Path) -> list[dict]:
    t0 = time.perf_counter()
    rows, raw = evaluate(cfg)
    add_paired(rows)
    paths = write_tables(rows, out_dir)
    if any(r["policy"] == "hppo" for r in rows):
        paths["comparison"] = out_dir / "comparison.md"
        paths["comparison"].write_text(comparison_markdown(rows))
    cl = claims(rows)
    if cl:
        (out_dir / "claims.json").write_text(json.dumps(cl, indent=1))
        (out_dir / "claims.md").write_text(claims_markdown(cl))
    plots = plot_all(rows, raw, out_dir / "plots", cfg.plot_policies)
    print_table(rows)
    if cl:
        print(claims_markdown(cl))
    print(f"tables: {paths['md']} (and .csv, .json); plots: {out_dir / 'plots'} ({len(plots)} PNG); "
          f"{time.perf_counter() - t0:.0f} s")
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(width=200)
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        t = Table(title=f"{scen}: mean ± 95 % CI over seeds (lower is better)")
        t.add_column("policy")
        for c in ("objective", "latency_mean", "latency_p95", "energy", "delta_ppl", "backlog_mean", "backlog_growth"):
            t.add_column(LABELS[c], justify="right")
        for r in rows:
            if r["scenario"] == scen:
                t.add_row(r["policy"], *(f"{fmt_number(r[c])} ± {fmt_number(r[c + '_ci'])}" for c in
                                         ("objective", "latency_mean", "latency_p95", "energy", "delta_ppl",
                                          "backlog_mean", "backlog_growth")))
        console.print(t)


def _hydra_main_impl(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from splitrl.config import ConfigError
    from splitrl.env.scenario import ScenarioError
    try:
        ecfg = typed_config(OmegaConf.to_container(cfg, resolve=True))
        run(ecfg, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, ScenarioError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    import hydra
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")(_hydra_main_impl)()


if __name__ == "__main__":
    main()
