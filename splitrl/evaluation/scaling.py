"""HPPO's evaluated objective against its training budget, beside myopic DPP, cloud-only and the oracle.

    python -m splitrl.evaluation.scaling --scenario outage_heavy --budgets 1024000 4096000 16384000 \\
        --train-seeds 3 --out docs/eval/scaling

For each budget, `splitrl-train` runs with the shipped HPPO defaults and `--train-seeds` vmapped seeds
(every schedule, the guide's included, scales with the budget). Each run is then evaluated greedily on the
same episodes as the three references (common random numbers; evaluation seed s runs training seed s
mod n, so the interval covers the training's spread). Writes `<out>/<scenario>.md` (objective, p95,
the paired difference to myopic DPP per budget) and `<out>/<scenario>_curve.png` (training return per
seed against env steps, each budget, with the references' evaluated returns as levels).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from splitrl.evaluation.plots import save_plot
from splitrl.evaluation.report import fmt_number, paired_cell
from splitrl.evaluation.run import EvalConfig, evaluate
from splitrl.evaluation.stats import add_paired

REFERENCES = ("cloud_only", "myopic_dpp", "oracle_dpp")


def train(scenario: str, budget: int, seeds: int, run_dir: Path, extra: list[str]) -> float:
    """One `splitrl-train` of HPPO (a subprocess: a fresh compile cache per budget); its wall time.

    A finished run of the same scenario, budget, seeds and overrides is reused (its recorded wall time
    is reported), so a study can be extended by one budget without retraining the others."""
    stamp = run_dir / "scaling.json"
    want = {"scenario": scenario, "budget": budget, "seeds": seeds, "overrides": list(extra)}
    if stamp.is_file() and (run_dir / "final_params.msgpack").is_file():
        done = json.loads(stamp.read_text())
        if {k: done.get(k) for k in want} == want:
            return float(done["train_wall_s"])
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "splitrl.training.train", f"scenario={scenario}", f"agent.total_timesteps={budget}",
           f"num_seeds={seeds}", "logger=disabled", "progress=false", f"hydra.run.dir={run_dir}", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    (run_dir.parent / f"{run_dir.name}.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"training {scenario} for {budget} steps failed; see {run_dir.parent / (run_dir.name + '.log')}")
    wall = time.perf_counter() - t0
    stamp.write_text(json.dumps(want | {"train_wall_s": wall}))
    return wall


def label(budget: int) -> str:
    return f"hppo@{budget / 1e6:g}M"


def study(scenario: str, budgets: list[int], seeds: int, eval_seeds: int, episodes: int, work: Path,
          extra: list[str], log=print) -> tuple[list[dict], dict[int, Path], dict[int, float]]:
    runs, walls = {}, {}
    for b in budgets:
        runs[b] = work / f"{Path(scenario).stem}_{b}"
        walls[b] = train(scenario, b, seeds, runs[b], extra)
        log(f"{scenario}: {seeds} seed(s) x {b:,} steps, trained in {walls[b]:.0f} s")
    base = EvalConfig(policies=REFERENCES, runs=(), scenarios=(scenario,), seeds=eval_seeds, episodes=episodes, steps=0,
                      splitllm_sla_factor=1.0, chen_lam=1.0, chen_timesteps=0, plot_policies=())
    rows, _ = evaluate(base, log=log)
    for b in budgets:
        trained, _ = evaluate(dataclasses.replace(base, policies=(), runs=(str(runs[b]),)), log=log)
        rows += [r | {"policy": label(b), "budget": b, "train_wall_s": walls[b]} for r in trained]
    return add_paired(rows), runs, walls


def markdown(rows: list[dict], scenario: str, budgets: list[int]) -> str:
    r0 = rows[0]
    lines = [f"`{scenario}`: HPPO (shipped defaults, {rows[-1].get('train_seeds', 1)} training seeds per budget) "
             f"on {r0['seeds']} seeds x {r0['episodes']} episodes; mean ± 95 % t-interval over seeds; the difference "
             "to myopic DPP is paired per seed on the same episodes (negative: better).", "",
             "| policy | training steps | objective | p95 (s) | p99 (s) | vs myopic DPP | training wall (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cell = lambda k, r=r: f"{fmt_number(r[k])} ± {fmt_number(r[k + '_ci'])}"  # noqa: E731
        steps = f"{r['budget']:,}" if "budget" in r else "–"
        wall = f"{r['train_wall_s']:.0f}" if "train_wall_s" in r else "–"
        vs = paired_cell(r, "myopic_dpp") if r["policy"] != "myopic_dpp" else "·"
        lines.append(f"| {r['policy']} | {steps} | {cell('objective')} | {cell('latency_p95')} | "
                     f"{cell('latency_p99')} | {vs} | {wall} |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], runs: dict[int, Path], scenario: str, path: Path) -> Path:
    """Training return (sampled policy, per seed) against env steps, with the references' evaluated returns."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, (b, run) in enumerate(sorted(runs.items())):
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        for seed in sorted({m["seed"] for m in metrics}):
            pts = [(m["train/env_steps"], m["train/episode_return"]) for m in metrics
                   if m["seed"] == seed and np.isfinite(m.get("train/episode_return", np.nan))]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, color=cmap(i / max(len(runs) - 1, 1)), lw=1.1, alpha=0.8,
                        label=f"HPPO, {b / 1e6:g}M-step budget" if seed == 0 else None)
    styles = {"cloud_only": ("grey", ":"), "myopic_dpp": ("tab:red", "--"), "oracle_dpp": ("black", "-.")}
    for r in rows:
        if r["policy"] in styles:
            c, ls = styles[r["policy"]]
            ax.axhline(r["return"], color=c, ls=ls, lw=1.2, label=f"{r['policy']} (evaluated)")
    return save_plot(fig, ax, "env steps", "episode return per episode", f"HPPO learning curves: {scenario}", path,
                     log_x=True, legend_loc="lower right")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m splitrl.evaluation.scaling", description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--budgets", type=int, nargs="+", default=[1_024_000, 4_096_000, 16_384_000])
    ap.add_argument("--train-seeds", type=int, default=3)
    ap.add_argument("--eval-seeds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("outputs/scaling"))
    ap.add_argument("--work", type=Path, default=None, help="run directories (default: <out>/runs)")
    ap.add_argument("overrides", nargs="*", help="extra splitrl-train overrides, e.g. agent.num_envs=4096")
    a = ap.parse_args(argv)
    if a.train_seeds < 1 or a.eval_seeds < 2 or a.episodes < 1 or any(b < 1 for b in a.budgets):
        ap.error("--train-seeds >= 1, --eval-seeds >= 2 (an interval), --episodes >= 1 and positive budgets")
    a.out.mkdir(parents=True, exist_ok=True)
    work = a.work or a.out / "runs"
    work.mkdir(parents=True, exist_ok=True)
    rows, runs, _ = study(a.scenario, a.budgets, a.train_seeds, a.eval_seeds, a.episodes, work, a.overrides)
    stem = Path(a.scenario).stem
    (a.out / f"{stem}.md").write_text(markdown(rows, a.scenario, a.budgets))
    (a.out / f"{stem}.json").write_text(json.dumps(rows, indent=1, default=float))
    plot_curves(rows, runs, a.scenario, a.out / f"{stem}_curve.png")
    print(markdown(rows, a.scenario, a.budgets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
