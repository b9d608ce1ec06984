"""How the modelling knobs that can flip a ranking move cloud-only, myopic DPP and the oracle.

    python -m splitrl.evaluation.sensitivity --scenario splitwise_gpt2-xl_galaxy-s23 --out docs/eval/sensitivity.md

For each knob (the cloud's background load, the disconnection rate, the base RTT, the kernel-launch
overhead, the KV-cache context reserved) and each value in its plausible range, the scenario is rebuilt
with that one change and the three policies run on the same episodes (common random numbers, as
`splitrl-eval`); the table gives each policy's objective and response-time p95 with 95 % intervals over
seeds, and the oracle's objective gain over cloud-only. Launch overheads change the device profiles,
so those rows rebuild the analytic tables in a private copy of the profiles directory.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import tempfile
from pathlib import Path

import jax
import yaml

from splitrl.baselines import ScenarioSpec, make_baseline
from splitrl.env.scenario import load_scenario_dict, make_with_info
from splitrl.evaluation.report import fmt_number
from splitrl.evaluation.run import episode_keys, rollout
from splitrl.evaluation.stats import seed_stats, summarise
from splitrl.resources import DATA_ENV, data_dir

POLICIES = ("cloud_only", "myopic_dpp", "oracle_dpp")
# knob -> (what it is, [(label, edit of the scenario mapping)])
KNOBS = {
    "background load (mean utilisation)": [(f"{m}", lambda d, m=m: _set(d, "serving.load.mean", m)) for m in (0.3, 0.6, 0.9)],
    "disconnections (P(drop) per slot, P(restore) 0.2)": [
        (f"{p}", lambda d, p=p: _set(_set(d, "channel.link.p_drop", p), "channel.link.p_restore", 0.2))
        for p in (0.0, 0.02, 0.1)],
    "base RTT (ms)": [(f"{r}", lambda d, r=r: _set(d, "channel.rtt_ms", r)) for r in (10.0, 40.0, 120.0)],
    "kernel-launch overhead (x the shipped figures)": [(f"x{k}", ("launch", k)) for k in (0.5, 1.0, 2.0)],
    "context reserved (tokens)": [(f"{c}", lambda d, c=c: _set(d, "context", c)) for c in ("auto", 2048, 4096)],
}


def _set(d: dict, dotted: str, value) -> dict:
    node = d
    *path, last = dotted.split(".")
    for k in path:
        node = node[k]
    node[last] = value
    return d


def _scaled_launch_profiles(scale: float, devices: tuple[str, ...], root: Path) -> Path:
    """A private copy of the profiles with `devices`' kernel overheads scaled and their tables rebuilt."""
    from splitrl.profiles.cli import SHIPPED_ANALYTIC, build
    shutil.copytree(data_dir(), root, dirs_exist_ok=True)
    for name in devices:
        path = root / "devices" / f"{name}.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["kernel_overhead_s"] = float(doc["kernel_overhead_s"]) * scale
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    for model, device, fmt in SHIPPED_ANALYTIC:
        if device in devices:
            build(model, device, fmt, root)
    return root


def evaluate_variant(data: dict, name: str, seeds: int, episodes: int) -> dict[str, dict]:
    """{policy: summarised row} of the three policies on one scenario mapping."""
    env, params, info = make_with_info(data)
    spec = ScenarioSpec(name=name, data=data, info=info)
    rows = {}
    for pname in POLICIES:
        policy = make_baseline(pname).bind(env, params)
        pparams = policy.init(env, params, spec, jax.random.PRNGKey(0))
        per_seed = []
        for seed in range(seeds):
            ek, pk = episode_keys(name, seed, episodes)
            per_seed.append(seed_stats(jax.device_get(rollout(env, policy, params, pparams, ek, pk,
                                                             int(params.max_steps_in_episode)))))
        rows[pname] = summarise(per_seed)
    return rows


def sweep(scenario: str, seeds: int, episodes: int, log=print) -> list[dict]:
    base, _ = load_scenario_dict(scenario)
    out = []
    for knob, values in KNOBS.items():
        for label, edit in values:
            data = copy.deepcopy(base)
            old_root = os.environ.get(DATA_ENV)
            with tempfile.TemporaryDirectory() as tmp:
                if isinstance(edit, tuple):   # a launch-overhead scale: rebuild the tables it changes
                    os.environ[DATA_ENV] = str(_scaled_launch_profiles(edit[1], (data["edge"], data["cloud"]),
                                                                       Path(tmp) / "profiles"))
                else:
                    data = edit(data)
                try:
                    rows = evaluate_variant(data, Path(scenario).stem, seeds, episodes)
                finally:
                    if old_root is None:
                        os.environ.pop(DATA_ENV, None)
                    else:
                        os.environ[DATA_ENV] = old_root
            out.append({"knob": knob, "value": label, "rows": rows})
            log(f"{knob} = {label}: " + ", ".join(f"{p} {r['objective']:.4g}" for p, r in rows.items()))
    return out


def markdown(results: list[dict], scenario: str, seeds: int, episodes: int) -> str:
    lines = [f"Scenario `{scenario}`, {seeds} seeds x {episodes} episodes; mean ± 95 % half-width over seeds; "
             "p95 is the response time over requests (queueing + service).", "",
             "| knob | value | cloud-only objective | cloud-only p95 (s) | myopic DPP objective | oracle objective | "
             "oracle p95 (s) | oracle gain over cloud-only |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        c, m, o = (r["rows"][p] for p in POLICIES)
        gain = 1 - o["objective"] / c["objective"] if c["objective"] else float("nan")
        cell = lambda row, k: f"{fmt_number(row[k])} ± {fmt_number(row[k + '_ci'])}"  # noqa: E731
        lines.append(f"| {r['knob']} | {r['value']} | {cell(c, 'objective')} | {cell(c, 'latency_p95')} | "
                     f"{cell(m, 'objective')} | {cell(o, 'objective')} | {cell(o, 'latency_p95')} | {100 * gain:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m splitrl.evaluation.sensitivity", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="splitwise_gpt2-xl_galaxy-s23")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("sensitivity.md"))
    a = ap.parse_args(argv)
    results = sweep(a.scenario, a.seeds, a.episodes)
    a.out.write_text(markdown(results, a.scenario, a.seeds, a.episodes))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
