"""`python -m splitrl.evaluation.fleet --fleet llama-2-7b_1xa100_peak ...`: the single-device baselines and
the wait-threshold rule on a fleet (splitrl/env/fleet.py, docs/fleet.md), with common random numbers.

Every device runs the single-device policy (`splitrl.baselines`) on its own observation and state,
vmapped over the devices with its own params (its device type's init: tables, candidate sets, SplitLLM's
DP plan on the type's ScenarioSpec as the fleet built it); the fleet's published cloud state reaches the
policies through the state (`cloud_load`, `cloud_wait_est`), so myopic DPP and greedy latency plan with
the published wait (`estimated_conditions`). The env's keys
depend only on (fleet, seed, episode), never on the policy, so every policy meets the same channels,
arrivals, request lengths and background. The threshold of `wait_threshold` is tuned on training
episodes (other seeds) over a grid, by the fleet's DPP objective, before evaluation. Trained runs
(`--runs DIR ...`: `splitrl-train fleet=...`, or a single-device run of the same model) run greedily on
every device with the same parameters (`splitrl.baselines.trained.Trained`, member 0), on the same
episodes as the baselines.

Metrics per seed (then the mean and a 95 % Student-t interval over seeds, splitrl/evaluation/stats.py):
response-time percentiles over every request of the fleet (queueing + service; a request dropped at a
full queue or failed has response time +inf, so it counts in every percentile it exceeds), the p95
spread across devices (worst device's p95 − best device's), cloud utilisation, cloud GPU-seconds per
served request (the devices' offloaded work; the background's is not the fleet's), edge energy and ΔPPL
per request, drops per device and episode, backlog growth, and the fleet's DPP objective per slot.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from splitrl.baselines import ScenarioSpec, make_baseline
from splitrl.baselines.dpp import FleetDPP, FleetOracle
from splitrl.baselines.threshold import WaitThreshold
from splitrl.baselines.trained import Trained
from splitrl.env import rollout as R
from splitrl.env.dpp import candidate_actions
from splitrl.env.fleet import start
from splitrl.env.fleet_scenario import FleetInfo, make_fleet_with_info
from splitrl.evaluation.plots import plot_fleet
from splitrl.evaluation.report import paired_matrix
from splitrl.evaluation.run import TRAIN_SEED0, episode_keys
from splitrl.evaluation.stats import add_paired, request_times, t_interval

POLICIES = ("cloud_only", "edge_only", "static_split", "greedy_latency", "myopic_dpp", "fleet_dpp", "congestion_dpp",
            "splitllm_dp", "wait_threshold", "fleet_oracle")
# --policies' default: all but the oracle (an upper reference that reads the slot's draws; its κ tuning
# costs as much again as congestion_dpp's), which runs when named
DEFAULT_POLICIES = tuple(p for p in POLICIES if p != "fleet_oracle")
SEARCHING = ("greedy_latency", "myopic_dpp", "fleet_dpp", "congestion_dpp", "fleet_oracle")   # pparams hold a candidate set
CONGESTION_TUNED = ("congestion_dpp", "fleet_oracle")   # κ tuned on training episodes
THRESHOLD_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
CONGESTION_GRID = (1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)   # congestion_dpp's multipliers tried
PAIRED = ("cloud_only", "myopic_dpp", "congestion_dpp")   # each row's objective minus these, seed by seed
DEVICE_FIELDS = ("response_time", "arrivals", "drops", "request_failed", "served", "energy", "delta_ppl",
                 "backlog", "boundary", "objective")
FLEET_FIELDS = ("cloud_util", "cloud_queue_s", "offloaded_work", "fleet_objective")
METRICS = {"objective": "fleet DPP objective / slot", "p50": "p50 (s)", "p95": "p95 (s)", "p99": "p99 (s)",
           "p95_spread": "p95 spread across devices (s)", "unanswered": "unanswered", "cloud_util": "cloud util",
           "gpu_s_per_request": "cloud GPU-s / request", "energy": "edge J / request", "delta_ppl": "ΔPPL",
           "drops": "drops / device-episode", "backlog_growth": "backlog growth (req/slot)",
           "offloaded": "offloaded share"}


# ----------------------------------------------------------------------------- policies
def make_policy(name: str, threshold_s: float = 5.0, params=None, congestion: float = 1.0):
    """A fleet baseline by name; `fleet_dpp`, `congestion_dpp` and `fleet_oracle` take the fleet's cloud
    numbers from `params` (FleetParams), the last two their tuned `congestion`. `fleet_oracle` (the
    full-information one-slot oracle, splitrl.baselines.dpp.FleetOracle) reads the slot's draws: an upper
    reference, not a deployable policy."""
    if name == "wait_threshold":
        return WaitThreshold(threshold_s)
    if name in ("fleet_dpp",) + CONGESTION_TUNED:
        c = params.cloud
        cls = FleetOracle if name == "fleet_oracle" else FleetDPP
        return cls(replicas=float(c.replicas), wait_ref_s=float(c.wait_ref_s), batch_gain=float(c.batch_gain),
                   congestion=congestion if name in CONGESTION_TUNED else 1.0, name=name)
    return make_baseline(name)


def device_type_specs(info: FleetInfo) -> list[ScenarioSpec]:
    """Each device type's ScenarioSpec as the fleet built it: `FleetInfo.devices` holds the ScenarioInfo of
    the scenario after the fleet's host-side changes (trace replay: one request class at the trace's mean
    request, the trace's longest request as KV context), so its cost tables and memory masks are the ones
    the fleet's EnvParams carry. The builder keeps no changed mapping, so `data` is None: a policy that
    reads it fails rather than planning on the raw scenario file."""
    return [ScenarioSpec(name=t.id, data=None, info=t) for t in info.devices]


def init_per_device(policy, env, params, candidates: str = "layer", info: FleetInfo | None = None):
    """The policy's params for every device ([N] leading axis), indexed by device type: the init runs once
    per type, on that type's params (all its devices have the same) and spec (`device_type_specs`).
    Without `info` every device is its own type with no spec (enough for all but SplitLLM's DP).
    With `candidates="layer"` the searching policies consider pure layer splits only (module docstring
    of splitrl/env/dpp.py; the count-canonical set is 7,775 placements per device for LLaMA-2-7B)."""
    if isinstance(policy, Trained):   # one policy shared by every device: load it once
        first = jax.tree.map(lambda x: x[0], params.device)
        shared = policy.init(env.device, first, None, jax.random.PRNGKey(0))
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (env.n_devices,) + x.shape), shared)
    types = np.arange(env.n_devices) if info is None else np.asarray(info.device_type)
    specs = None if info is None else device_type_specs(info)
    per_type = {}
    for i, k in enumerate(types.tolist()):
        if k in per_type:
            continue
        p_i = jax.tree.map(lambda x, i=i: x[i], params.device)
        if policy.name in SEARCHING:
            per_type[k] = candidate_actions(env.device, p_i, layer_only=candidates == "layer", exhaustive=False)
            if isinstance(policy, FleetDPP):
                per_type[k] = policy.with_candidates(per_type[k])
        else:
            spec = None if specs is None else specs[k]
            per_type[k] = policy.bind(env.device, p_i).init(env.device, p_i, spec, jax.random.PRNGKey(0))
    return jax.tree.map(lambda *xs: jnp.stack(xs), *(per_type[k] for k in types.tolist()))


@partial(jax.jit, static_argnames=("env", "policy", "n_steps"))
def fleet_rollout(env, policy, params, pparams, env_keys, policy_keys, n_steps: int) -> dict:
    """Episodes of `policy` on every device of the fleet (no auto-reset; one fleet per key). Returns
    {field: [T, E, N] per device or [T, E] for the fleet} plus the published wait each device saw.
    A FleetOracle acts on each whole fleet with the env's key of the slot: the very key `R.rollout`
    then passes to `env.step_env` (auto_reset=False), so it reads the slot's true draws."""
    reset_keys, env_roots = jax.vmap(jax.random.split)(env_keys).transpose(1, 0, 2)
    fold = jax.vmap(jax.random.fold_in, (0, None))
    per_device = jax.vmap(policy, (0, 0, 0, 0, 0, None))

    def act(obs, state, pol_keys, env_keys):
        if isinstance(policy, FleetOracle):   # reads the future: the keys step_env is about to be given
            return jax.vmap(lambda s, k: policy.fleet_action(env, pparams, s, params, k))(state, env_keys), None

        def one(k, o, s):
            return per_device(pparams, jax.random.split(k, env.n_devices), o, s.device, params.device, None)
        return jax.vmap(one)(pol_keys, obs, state), None

    def record(s: R.Step) -> dict:
        return {k: s.info[k] for k in DEVICE_FIELDS + FLEET_FIELDS} | {"published_wait": s.state.device.cloud_wait_est}

    carry = start(env, params, reset_keys)
    return R.rollout(env, params, act, carry, jnp.arange(n_steps),
                     lambda t: (fold(policy_keys, t), fold(env_roots, t)), record, auto_reset=False)[1]


def fleet_name(fleet) -> str:
    """A fleet's name for keys and tables: the file's stem, or a mapping's id."""
    return str(fleet["id"]) if isinstance(fleet, dict) else Path(fleet).stem


def run_seed(env, policy, params, pparams, fleet: str, seed: int, episodes: int, steps: int) -> dict:
    ek, pk = episode_keys(fleet, seed, episodes)
    return jax.device_get(fleet_rollout(env, policy, params, pparams, ek, pk, steps))


# ----------------------------------------------------------------------------- metrics
def _pct(times: np.ndarray, p: float) -> float:
    # the empirical quantile: between two unanswered (+inf) requests interpolation would give inf - inf
    return float(np.percentile(times, p, method="inverted_cdf")) if times.size else float("nan")


def p95_spread(out: dict) -> float:
    """Worst device's p95 response time minus the best device's (inf when only the best answers in time;
    nan when no device does: no spread is measurable)."""
    p95 = [_pct(request_times({k: out[k][..., i] for k in out})[0], 95) for i in range(out["arrivals"].shape[-1])]
    worst, best = max(p95), min(p95)
    return float("nan") if np.isinf(best) else worst - best


def seed_metrics(out: dict, n_layers: int) -> dict[str, float]:
    """One seed's fleet metrics (module docstring) from `fleet_rollout`'s output."""
    dev = {k: np.asarray(out[k], np.float64) for k in ("arrivals", "drops", "request_failed", "response_time")}
    times, answered = request_times(dev)
    served = float(np.sum(out["served"]))
    backlog = np.asarray(out["backlog"]).mean(axis=(1, 2))          # fleet-mean backlog per slot
    slope = float(np.polyfit(np.arange(backlog.size), backlog, 1)[0]) if backlog.size > 1 else 0.0
    episodes, n = out["arrivals"].shape[1:]
    return {"objective": float(np.mean(out["fleet_objective"])), "p50": _pct(times, 50), "p95": _pct(times, 95),
            "p99": _pct(times, 99), "p95_spread": p95_spread(dev),
            "unanswered": float(1.0 - answered.mean()) if times.size else 0.0,
            "cloud_util": float(np.mean(out["cloud_util"])),
            "gpu_s_per_request": float(np.sum(out["offloaded_work"])) / max(served, 1e-9),
            "energy": float(np.mean(out["energy"])), "delta_ppl": float(np.mean(out["delta_ppl"])),
            "drops": float(np.sum(out["drops"])) / (episodes * n), "backlog_growth": slope,
            "offloaded": float(np.mean(np.asarray(out["boundary"]) < n_layers))}


def summarise(per_seed: list[dict]) -> dict:
    row = {}
    for m in METRICS:
        row[m], row[f"{m}_ci"] = t_interval(np.array([s[m] for s in per_seed]))
    row["objective_seeds"] = [s["objective"] for s in per_seed]
    return row


# ----------------------------------------------------------------------------- evaluation
def train_score(env, policy, params, pparams, fleet: str, seeds: int, episodes: int, steps: int) -> float:
    """The mean fleet DPP objective on training episodes (seeds TRAIN_SEED0..., never evaluated)."""
    outs = [run_seed(env, policy, params, pparams, fleet, TRAIN_SEED0 + s, episodes, steps) for s in range(seeds)]
    return float(np.mean([np.mean(o["fleet_objective"]) for o in outs]))


def grid_scores(env, params, fleet: str, policy, base, field: str, grid, seeds: int, episodes: int,
                steps: int) -> dict[float, float]:
    """`train_score` with pparams[field] set to each value of `grid` on every device; one compile for the
    grid (the value is data)."""
    return {float(value): train_score(env, policy, params, base | {field: jnp.full(env.n_devices, value, jnp.float32)},
                                      fleet, seeds, episodes, steps) for value in grid}


def tune_threshold(env, params, fleet: str, grid, seeds: int, episodes: int, steps: int,
                   info: FleetInfo | None = None) -> tuple[float, dict]:
    """The grid's threshold of least mean fleet DPP objective on training episodes; thresholds that tie
    were never crossed differently in training: the largest, the one that departs least from cloud-only.
    A grid of one value is that value, untuned."""
    if len(grid) == 1:
        return float(grid[0]), {}
    policy = WaitThreshold()
    scores = grid_scores(env, params, fleet, policy, init_per_device(policy, env, params, info=info), "threshold_s",
                         grid, seeds, episodes, steps)
    best = min(scores.values())
    return max(t for t, v in scores.items() if v == best), scores


def tune_congestion(env, params, fleet: str, grid, seeds: int, episodes: int, steps: int, candidates: str,
                    info: FleetInfo | None = None, name: str = "congestion_dpp") -> tuple[float, dict]:
    """The multiplier κ of `name` (congestion_dpp or fleet_oracle) of least mean fleet DPP objective on
    training episodes; ties go to the smallest, the closest to the drift itself. A grid of one value is
    that value, untuned."""
    if len(grid) == 1:
        return float(grid[0]), {}
    policy = make_policy(name, params=params)
    scores = grid_scores(env, params, fleet, policy, init_per_device(policy, env, params, candidates, info),
                         "congestion", grid, seeds, episodes, steps)
    best = min(scores.values())
    return min(k for k, v in scores.items() if v == best), scores


def trained_policy(run: str) -> tuple[str, Trained, dict]:
    """(row name, policy, row extras) of a trained run, given as DIR or LABEL=DIR: the label or its run
    name, and the fleet or scenario it trained on."""
    from splitrl.training.rundir import RunDir
    # Hydra sweep dirs have "=" in their names: a whole existing path is a DIR, not LABEL=DIR
    label, _, run_dir = ("", "", run) if Path(run).is_dir() else run.partition("=")
    rd = RunDir.read(run_dir)
    policy = Trained.from_run_dir(run_dir)
    name = label or str(rd.summary().get("run_name") or rd.path.name)
    return f"trained:{name}", policy, {"run_dir": str(rd.path), "trained_on": rd.fleet_id or rd.scenario_id}


def evaluate_fleet(fleet: str, policies, seeds: int, episodes: int, steps: int, grid, train_seeds: int,
                   candidates: str = "layer", log=print, runs=(),
                   congestion_grid=CONGESTION_GRID) -> tuple[list[dict], dict]:
    """Rows (one per policy, then one per trained run) and the raw per-seed outputs {policy: [per-seed
    output]} of one fleet."""
    env, params, info = make_fleet_with_info(fleet)
    fleet = fleet_name(fleet)
    steps = steps or int(params.max_steps_in_episode)
    rows, raw = [], {}
    entries = [(name, None, {}) for name in policies] + [trained_policy(r) for r in runs]
    for name, policy, extra in entries:
        t0 = time.perf_counter()
        name = name if name not in raw else f"{name}#{len(raw)}"   # two runs of one run name
        if policy is None:
            threshold, congestion = 5.0, 1.0
            if name == "wait_threshold":
                threshold, scores = tune_threshold(env, params, fleet, grid, train_seeds, episodes, steps, info)
                extra = {"threshold_s": threshold, "tuning": scores}
            if name in CONGESTION_TUNED:
                congestion, scores = tune_congestion(env, params, fleet, congestion_grid, train_seeds, episodes, steps,
                                                     candidates, info, name)
                extra = {"congestion": congestion, "tuning": scores}
            policy = make_policy(name, threshold, params, congestion)
        pparams = init_per_device(policy, env, params, candidates, info)
        if name.startswith("trained:"):   # its score on the training episodes: how to pick among runs unseen
            extra = extra | {"train_objective": train_score(env, policy, params, pparams, fleet, train_seeds,
                                                            episodes, steps)}
        outs = [run_seed(env, policy, params, pparams, fleet, s, episodes, steps) for s in range(seeds)]
        raw[name] = outs
        row = {"fleet": fleet, "policy": name, "seeds": seeds, "episodes": episodes, "steps": steps,
               "n_devices": env.n_devices, "n_layers": env.n_layers} | extra | summarise([seed_metrics(o, env.n_layers) for o in outs])
        rows.append(row)
        log(f"{fleet:28s} {name:15s} objective {row['objective']:9.4f} ± {row['objective_ci']:.4f}  "
            f"p95 {row['p95']:8.2f}  util {row['cloud_util']:.2f}  ({time.perf_counter() - t0:.0f} s)")
    return add_paired(rows, PAIRED, group="fleet"), raw


# ----------------------------------------------------------------------------- writers
def fmt(x: float, ci: float | None = None) -> str:
    def one(v):
        if v is None or np.isnan(v):
            return "–"
        if np.isinf(v):
            return "∞"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return one(x) if ci is None else f"{one(x)} ± {one(ci)}"


def markdown(rows: list[dict]) -> str:
    """One table per fleet: mean ± 95 % t-interval over seeds ("–": not measurable, "∞": unanswered
    requests reach that percentile, so no finite value and no interval)."""
    lines = []
    for fleet in dict.fromkeys(r["fleet"] for r in rows):
        sub = [r for r in rows if r["fleet"] == fleet]
        r0 = sub[0]
        lines += [f"### {fleet}", "", f"{r0['n_devices']} devices, {r0['seeds']} seeds × {r0['episodes']} fleets × "
                  f"{r0['steps']} slots; mean ± 95 % t-interval over seeds; lower is better except utilisation.", "",
                  "| policy | " + "".join(f"objective − {ref} (paired) | " for ref in PAIRED)
                  + " | ".join(METRICS.values()) + " |",
                  "|---" * (len(METRICS) + len(PAIRED) + 1) + "|"]
        for r in sub:
            name = r["policy"] + (f" (τ = {r['threshold_s']:g} s)" if "threshold_s" in r else "")
            name += f" (κ = {r['congestion']:g})" if "congestion" in r else ""
            name += f" (training episodes: {r['train_objective']:.3f})" if "train_objective" in r else ""
            paired = "".join(fmt(r.get(f"objective_vs_{ref}"), r.get(f"objective_vs_{ref}_ci")) + " | " for ref in PAIRED)
            lines.append(f"| {name} | {paired}" + " | ".join(fmt(r[m], r[f"{m}_ci"]) for m in METRICS) + " |")
        lines += ["", "Every pair, objective per slot (row − column, paired over seeds):", "", *paired_matrix(sub), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", nargs="+", default=["llama-2-7b_1xa100_peak"], help="splitrl/conf/fleet names or paths")
    ap.add_argument("--policies", nargs="+", default=list(DEFAULT_POLICIES), choices=POLICIES,
                    help="default: all but fleet_oracle (the full-information upper reference; name it to run it)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=4, help="fleets per seed")
    ap.add_argument("--steps", type=int, default=0, help="slots per episode (0: the fleet's episode length)")
    ap.add_argument("--train-seeds", type=int, default=2, help="seeds of training episodes to tune the threshold")
    ap.add_argument("--grid", type=float, nargs="+", default=list(THRESHOLD_GRID), help="thresholds to try (s; one value: that threshold, untuned)")
    ap.add_argument("--congestion-grid", type=float, nargs="+", default=list(CONGESTION_GRID),
                    help="congestion_dpp's and fleet_oracle's multipliers κ to tune over (one value: that κ, untuned)")
    ap.add_argument("--candidates", choices=("layer", "units"), default="layer",
                    help="placements myopic DPP and greedy latency search: layer splits, or count-canonical unit sets")
    ap.add_argument("--runs", nargs="+", default=[], metavar="[LABEL=]DIR",
                    help="splitrl-train run directories to evaluate greedily beside the baselines (member 0), "
                         "each optionally labelled (row 'trained:LABEL')")
    ap.add_argument("--out", type=Path, default=Path("docs/eval/fleet"))
    ap.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                    help="only rewrite the results.md beside an existing results.json (no rollouts)")
    a = ap.parse_args(argv)
    if a.render:
        rows = add_paired(json.loads(a.render.read_text()), PAIRED, group="fleet")
        a.render.with_name("results.md").write_text(markdown(rows))
        print(f"wrote {a.render.with_name('results.md')}")
        return
    if a.seeds < 1 or a.episodes < 1 or a.train_seeds < 1 or a.steps < 0:
        ap.error("--seeds, --episodes and --train-seeds must be >= 1, --steps >= 0")
    t0 = time.perf_counter()
    rows, plots = [], []
    for fleet in a.fleet:
        r, raw = evaluate_fleet(fleet, a.policies, a.seeds, a.episodes, a.steps, a.grid, a.train_seeds, a.candidates,
                                runs=a.runs, congestion_grid=a.congestion_grid)
        rows += r
        plots += plot_fleet(fleet_name(fleet), raw, a.out / "plots", r[0]["n_layers"])
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(rows, indent=1, default=float))
    (a.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))
    print(f"wrote {a.out / 'results.md'}, {a.out / 'results.json'}, {len(plots)} plots in {a.out / 'plots'}; "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
