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

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import csv  # noqa: E402
import dataclasses  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from splitrl.agents.baselines import ScenarioSpec, Trained, make_baseline  # noqa: E402

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# info entries recorded per slot (all f32 scalars of the env's info)
RECORD = ("latency", "energy", "delta_ppl", "backlog", "objective", "served", "arrivals", "drops", "failed",
          "timed_out", "bandwidth", "boundary", "fmt", "edge_frac", "bytes_sent")


# ----------------------------------------------------------------------------- rollout
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
    """Episodes of `policy` in `env` (no auto-reset; vmapped over the keys' leading axis N).
    Returns {info key: f32[N, n_steps]} for RECORD plus "reward". Compiled once per (env structure,
    policy, n_steps): params, policy params and keys are data."""

    def episode(env_key, pol_key):
        k_reset, k_steps = jax.random.split(env_key)
        obs, state = env.reset_env(k_reset, env_params)

        def step(carry, t):
            obs, state = carry
            step_key = jax.random.fold_in(k_steps, t)
            action = policy(pparams, jax.random.fold_in(pol_key, t), obs, state, env_params, step_key)
            obs, state, reward, _, info = env.step_env(step_key, state, action, env_params)
            out = {k: jnp.asarray(info[k], jnp.float32) for k in RECORD}
            return (obs, state), out | {"reward": reward}

        return jax.lax.scan(step, (obs, state), jnp.arange(n_steps))[1]

    return jax.vmap(episode)(env_keys, policy_keys)


# ----------------------------------------------------------------------------- statistics
METRICS = ("latency_mean", "latency_p50", "latency_p95", "latency_p99", "energy", "delta_ppl", "backlog_mean",
           "backlog_max", "backlog_growth", "objective", "return", "drops", "timed_out", "failed", "edge_frac",
           "boundary")
LABELS = {"latency_mean": "latency mean (s)", "latency_p50": "p50 (s)", "latency_p95": "p95 (s)",
          "latency_p99": "p99 (s)", "energy": "energy/req (J)", "delta_ppl": "ΔPPL", "backlog_mean": "backlog",
          "backlog_max": "max backlog", "backlog_growth": "backlog growth (req/slot)", "objective": "DPP objective",
          "return": "return", "drops": "drops/ep", "timed_out": "timeouts", "failed": "failed",
          "edge_frac": "edge units", "boundary": "boundary"}


def seed_stats(out: dict[str, np.ndarray]) -> dict[str, float]:
    """Statistics of one seed's episodes ({key: [N, T]} from `rollout`). Latency percentiles pool
    every slot's request; backlog growth is the least-squares slope of the episode-mean backlog over
    the slots (requests per slot: > 0 means the queue is not stable over the horizon)."""
    lat = out["latency"].ravel()
    q = out["backlog"].mean(0)
    t = np.arange(q.shape[0], dtype=np.float64)
    slope = float(np.polyfit(t, q, 1)[0]) if q.shape[0] > 1 else 0.0
    return {"latency_mean": float(lat.mean()), "latency_p50": float(np.percentile(lat, 50)),
            "latency_p95": float(np.percentile(lat, 95)), "latency_p99": float(np.percentile(lat, 99)),
            "energy": float(out["energy"].mean()), "delta_ppl": float(out["delta_ppl"].mean()),
            "backlog_mean": float(out["backlog"].mean()), "backlog_max": float(out["backlog"].max()),
            "backlog_growth": slope, "objective": float(out["objective"].mean()),
            "return": float(out["reward"].sum(1).mean()), "drops": float(out["drops"].sum(1).mean()),
            "timed_out": float(out["timed_out"].mean()), "failed": float(out["failed"].sum(1).mean()),
            "edge_frac": float(out["edge_frac"].mean()), "boundary": float(out["boundary"].mean())}


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of a Student-t confidence interval over seeds (0 half-width for one seed)."""
    from scipy import stats
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def summarise(per_seed: list[dict[str, float]]) -> dict[str, float]:
    row = {}
    for m in METRICS:
        mean, half = t_interval(np.array([s[m] for s in per_seed]))
        row[m], row[f"{m}_ci"] = mean, half
    return row


# ----------------------------------------------------------------------------- evaluation
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    policies: tuple[str, ...]   # baseline names (splitrl.agents.baselines.BASELINES)
    runs: tuple[str, ...]       # splitrl-train run dirs (HPPO, flat PPO): evaluated on their scenario
    scenarios: tuple[str, ...]  # conf/scenario names or YAML paths
    seeds: int                  # seeds (CI over seeds)
    episodes: int               # episodes per seed
    steps: int                  # slots per episode (0: the scenario's episode length)
    splitllm_sla_factor: float  # SplitLLM's SLA = this x the scenario's typical latency
    chen_lam: float             # Chen et al.'s UE-cost weight λ
    chen_timesteps: int         # PPO env steps to train Chen et al.'s agent per scenario
    plot_policies: tuple[str, ...]  # policies drawn in the partition-over-time plot (empty: all)


def scenario_spec(name: str) -> tuple[Any, Any, ScenarioSpec]:
    from splitrl.env.scenario import load_scenario_dict, make_with_info
    env, params, info = make_with_info(name)
    data, _ = load_scenario_dict(name)
    return env, params, ScenarioSpec(name=Path(name).stem, data=data, info=info)


def evaluate(cfg: EvalConfig, log=print) -> tuple[list[dict], dict]:
    """Rows (one per evaluated (policy, scenario)) and raw per-slot outputs {(scenario, policy): {k: [S, N, T]}}."""
    rows, raw = [], {}
    trained = [Trained.from_run_dir(r) for r in cfg.runs]
    for scen in cfg.scenarios:
        env, params, spec = scenario_spec(scen)
        n_steps = cfg.steps or int(params.max_steps_in_episode)
        policies = [make_baseline(n, **_baseline_kwargs(n, cfg)) for n in cfg.policies]
        policies += [t for t in trained if t.scenario_id() == spec.info.id]
        for policy in policies:
            policy = policy.bind(env, params)
            t0 = time.perf_counter()
            pparams = policy.init(env, params, spec, jax.random.PRNGKey(0))
            t_init = time.perf_counter() - t0
            per_seed, outs = [], []
            for seed in range(cfg.seeds):
                ek, pk = episode_keys(spec.name, seed, cfg.episodes)
                out = jax.device_get(rollout(env, policy, params, pparams, ek, pk, n_steps))
                per_seed.append(seed_stats(out))
                outs.append(out)
            raw[spec.name, policy.name] = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
            row = {"scenario": spec.name, "policy": policy.name, "model": spec.info.model, "edge": spec.info.edge,
                   "edge_fits": bool(params.costs.boundary_mask[-1]), "seeds": cfg.seeds, "episodes": cfg.episodes,
                   "steps": n_steps} | summarise(per_seed)
            rows.append(row)
            log(f"{spec.name:40s} {policy.name:15s} objective {row['objective']:8.4f} ± {row['objective_ci']:.4f}  "
                f"latency {row['latency_mean']:8.3f} s  p95 {row['latency_p95']:8.3f}  ({t_init:.1f} s init, "
                f"{time.perf_counter() - t0 - t_init:.1f} s eval)")
    return rows, raw


def _baseline_kwargs(name: str, cfg: EvalConfig) -> dict:
    if name == "splitllm_dp":
        return {"sla_factor": cfg.splitllm_sla_factor}
    if name == "chen_ppo":
        return {"lam": cfg.chen_lam, "total_timesteps": cfg.chen_timesteps}
    return {}


# ----------------------------------------------------------------------------- writers
TABLE_COLUMNS = ("objective", "latency_mean", "latency_p50", "latency_p95", "latency_p99", "energy", "delta_ppl",
                 "backlog_mean", "backlog_max", "backlog_growth")


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "nan"
    if x == 0:
        return "0"
    mag = abs(x)
    return f"{x:.3g}" if 1e-3 <= mag < 1e4 else f"{x:.2e}"


def markdown_table(rows: list[dict], columns=TABLE_COLUMNS) -> str:
    """One Markdown table per scenario: mean ± 95 % half-width over seeds."""
    out = []
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        rs = [r for r in rows if r["scenario"] == scen]
        r0 = rs[0]
        out.append(f"### {scen} ({r0['model']} on {r0['edge']}; {r0['seeds']} seeds x {r0['episodes']} episodes x "
                   f"{r0['steps']} slots)\n")
        out.append("| policy | " + " | ".join(LABELS[c] for c in columns) + " |")
        out.append("|---|" + "---:|" * len(columns))
        best = min(r["objective"] for r in rs if r["policy"] != "oracle_dpp")
        for r in rs:
            name = r["policy"] + (" (reads the future)" if r["policy"] == "oracle_dpp" else "")
            if r["policy"] == "edge_only" and not r["edge_fits"]:
                name += " (does not fit: deepest split)"
            cells = [f"{_fmt(r[c])} ± {_fmt(r[c + '_ci'])}" for c in columns]
            if r["objective"] == best:
                cells[0] = f"**{cells[0]}**"
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_tables(rows: list[dict], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "results.json", "md": out_dir / "results.md"}
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    paths["json"].write_text(json.dumps(rows, indent=1))
    paths["md"].write_text("Mean ± half-width of a 95 % Student-t interval over seeds; every number from the env's "
                           "`info`. Bold: the best objective of a causal policy.\n\n" + markdown_table(rows))
    return paths


# Splitwise (Younesi et al.) against "existing partitioners": ours are the layer-level ones
PARTITIONERS = ("static_split", "splitllm_dp", "chen_ppo")


CLAIM_POLICIES = ("hppo", "myopic_dpp", "oracle_dpp")   # ours, the causal DPP controller, the upper reference


def claims(rows: list[dict], policies=CLAIM_POLICIES) -> list[dict]:
    """Per Splitwise scenario and policy, the paper's three claims measured against our baselines:
    end-to-end latency ratio vs the partitioners (paper 1.4-2.8x), the largest energy saving vs a
    partitioner or cloud-only (paper: up to 41 %), p95 latency reduction vs cloud-only (paper 53-61 %)."""
    out = []
    for scen, policy in itertools.product(
            dict.fromkeys(r["scenario"] for r in rows if r["scenario"].startswith("splitwise")), policies):
        by = {r["policy"]: r for r in rows if r["scenario"] == scen}
        if policy not in by:
            continue
        me = by[policy]
        ratios = {p: by[p]["latency_mean"] / me["latency_mean"] for p in PARTITIONERS if p in by}
        savings = {p: 1 - me["energy"] / by[p]["energy"] for p in (*PARTITIONERS, "cloud_only") if p in by and by[p]["energy"] > 0}
        row = {"scenario": scen, "policy": policy,
               "latency_ratio_min": min(ratios.values()) if ratios else math.nan,
               "latency_ratio_max": max(ratios.values()) if ratios else math.nan,
               "latency_ratios": ratios,
               "energy_saving_max": max(savings.values()) if savings else math.nan,
               "energy_saving_vs": max(savings, key=savings.get) if savings else "",
               "p95_reduction_vs_cloud": (1 - me["latency_p95"] / by["cloud_only"]["latency_p95"]) if "cloud_only" in by
               else math.nan}
        out.append(row)
    return out


def claims_markdown(cl: list[dict]) -> str:
    lines = ["| setting | policy | latency vs partitioners (paper 1.4–2.8×) | energy saving, best case (paper ≤ 41 %) | "
             "p95 vs cloud-only (paper 53–61 % lower) |", "|---|---|---:|---:|---:|"]
    for c in cl:
        lines.append(f"| {c['scenario'].removeprefix('splitwise_')} | {c['policy']} | "
                     f"{c['latency_ratio_min']:.2f}–{c['latency_ratio_max']:.2f}× | "
                     f"{100 * c['energy_saving_max']:.0f} % (vs {c['energy_saving_vs']}) | "
                     f"{100 * c['p95_reduction_vs_cloud']:.0f} % lower |")
    return ("\n".join(lines) + "\n\nPartitioners: " + ", ".join(PARTITIONERS) + ". A ratio > 1× means the policy is "
            "faster; a negative saving or reduction means it is worse. oracle_dpp reads the future (upper reference).\n")


# ----------------------------------------------------------------------------- plots
def plot_all(rows: list[dict], raw: dict, out_dir: Path, partition_policies: tuple[str, ...] = ()) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    all_pols = list(dict.fromkeys(r["policy"] for r in rows))
    cmap = plt.get_cmap("tab20")
    color = {p: cmap(i % 20) for i, p in enumerate(all_pols)}   # one colour per policy in every plot
    for scen in scenarios:
        pols = [p for (s, p) in raw if s == scen]
        # latency CDF
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for p in pols:
            lat = np.sort(raw[scen, p]["latency"].ravel())
            ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=p, lw=2.2 if p == "hppo" else 1.3, color=color[p],
                    ls="--" if p == "oracle_dpp" else "-")
        ax.set_xscale("log")
        ax.set_xlabel("request latency (s, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"latency CDF: {scen}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        paths.append(out_dir / f"latency_cdf_{scen}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
        # partition over time beside the bandwidth (seed 0, episode 0: the same channel for every policy)
        shown = [p for p in pols if not partition_policies or p in partition_policies]
        fig, axes = plt.subplots(len(shown) + 1, 1, figsize=(8, 1.3 * (len(shown) + 1) + 0.6), sharex=True)
        bw = raw[scen, shown[0]]["bandwidth"][0, 0] * 8 / 1e6
        axes[0].semilogy(bw, color="k", lw=1)
        axes[0].set_ylabel("Mbit/s", fontsize=8)
        axes[0].set_title(f"true bandwidth and each policy's split over one episode: {scen}", fontsize=10)
        n_layers = max(float(np.max(raw[scen, p]["boundary"])) for p in pols)
        for ax, p in zip(axes[1:], shown, strict=True):
            o = raw[scen, p]
            depth = o["boundary"][0, 0] + o["edge_frac"][0, 0]
            ax.step(np.arange(depth.size), depth, where="post", lw=1.2, color=color[p])
            ax.set_ylim(-0.5, n_layers + 0.5)
            ax.set_ylabel(p, fontsize=7, rotation=0, ha="right", va="center")
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("slot (layers on the edge + share of the boundary layer's units, per policy)")
        fig.tight_layout()
        paths.append(out_dir / f"partition_{scen}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    paths.append(plot_objective(rows, out_dir / "objective_by_scenario.png", color))
    return paths


def plot_objective(rows: list[dict], path: Path, color: dict | None = None) -> Path:
    """Mean objective per scenario and policy with 95 % intervals (from the rows alone)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    pols = list(dict.fromkeys(r["policy"] for r in rows))
    if color is None:
        cmap = plt.get_cmap("tab20")
        color = {p: cmap(i % 20) for i, p in enumerate(pols)}
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(scenarios) + 3), 4.5))
    width = 0.8 / len(pols)
    for i, p in enumerate(pols):
        xs, ys, es = [], [], []
        for j, scen in enumerate(scenarios):
            r = next((r for r in rows if r["scenario"] == scen and r["policy"] == p), None)
            if r is not None:
                xs.append(j + (i - len(pols) / 2 + 0.5) * width)
                ys.append(r["objective"])
                es.append(r["objective_ci"])
        ax.bar(xs, ys, width, yerr=es, label=p, capsize=1.5, color=color[p], hatch="//" if p == "oracle_dpp" else None)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([s.removeprefix("splitwise_") for s in scenarios], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("DPP objective per slot\n(symlog; lower is better)")
    ax.set_title("mean drift-plus-penalty objective per slot, 95 % intervals over seeds", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- Hydra
def typed_config(data: dict) -> EvalConfig:
    from splitrl.config import ConfigError, build
    data = dict(data)
    for k in ("policies", "runs", "scenarios", "plot_policies"):
        if not isinstance(data.get(k, ()), list | tuple):
            raise ConfigError(f"config {k} = {data.get(k)!r}: must be a list")
        data[k] = tuple(data.get(k) or ())
    cfg = build(EvalConfig, data, "eval")
    from splitrl.agents.baselines import BASELINES
    unknown = [p for p in cfg.policies if p not in BASELINES]
    if unknown:
        raise ConfigError(f"config policies: {unknown} unknown; baselines are {sorted(BASELINES)}; trained policies "
                          "go in runs (splitrl-train run dirs)")
    for r in cfg.runs:
        if not (Path(r) / "resolved_config.yaml").is_file():
            raise ConfigError(f"config runs: {r} is not a splitrl-train run dir (no resolved_config.yaml)")
    if cfg.seeds < 1 or cfg.episodes < 1 or cfg.steps < 0:
        raise ConfigError(f"config seeds = {cfg.seeds}, episodes = {cfg.episodes}, steps = {cfg.steps}: need >= 1, >= 1, >= 0")
    return cfg


def run(cfg: EvalConfig, out_dir: Path) -> list[dict]:
    t0 = time.perf_counter()
    rows, raw = evaluate(cfg)
    paths = write_tables(rows, out_dir)
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
                t.add_row(r["policy"], *(f"{_fmt(r[c])} ± {_fmt(r[c + '_ci'])}" for c in
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
