"""The grid's report: per (link cell, partition) the measured / predicted ratio and the mean absolute
relative error |predicted - measured| / measured before and after calibration (held-out repeats),
a heatmap of the ratios, and the calibration file (calibrate.py)."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

import numpy as np

from splitrl.runtime import calibrate as C
from splitrl.runtime.grid import GRID_PLANS, Cell

TARGET = 0.15


def cell_stats(rows: list[dict], before: np.ndarray, after: np.ndarray) -> list[dict]:
    """One entry per (link cell, plan): median ratios and mean absolute relative errors."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["mbps"], r["rtt_ms"], r["loss"], r["plan"]), []).append(i)
    out = []
    for (mbps, rtt, loss, plan), idx in groups.items():
        m = np.array([rows[i]["measured_s"] for i in idx])
        out.append({"cell": Cell(mbps, rtt, loss), "plan": plan, "mode": rows[idx[0]]["mode"], "n": len(idx),
                    "measured_s": float(np.median(m)),
                    "ratio_before": float(np.median(m / before[idx])), "ratio_after": float(np.median(m / after[idx])),
                    "mae_before": float(np.mean(np.abs(before[idx] - m) / m)),
                    "mae_after": float(np.mean(np.abs(after[idx] - m) / m))})
    return sorted(out, key=lambda s: (s["cell"].loss, s["cell"].rtt_ms, s["cell"].mbps, _plan_order(s["plan"])))


def _plan_order(plan: str) -> int:
    return GRID_PLANS.index(plan) if plan in GRID_PLANS else len(GRID_PLANS)


def summary(stats: list[dict]) -> dict:
    out = {}
    for when in ("before", "after"):
        mae = np.array([s[f"mae_{when}"] for s in stats])
        worst = stats[int(np.argmax(mae))]
        out[when] = {"median_cell_mae": float(np.median(mae)), "worst_cell_mae": float(mae.max()),
                     "worst_cell": f"{worst['cell'].name} {worst['plan']}",
                     "cells_over_target": int((mae > TARGET).sum()), "cells": len(stats)}
    return out


def heatmap(stats: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    cols = sorted({s["cell"] for s in stats}, key=lambda c: (c.loss, c.rtt_ms, c.mbps))
    plans = sorted({s["plan"] for s in stats}, key=_plan_order)
    modes = {s["plan"]: s["mode"].replace("_", "-") for s in stats}
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.55 * len(cols) + 2), 2 * (1.2 + 0.45 * len(plans))))
    for ax, when in zip(axes, ("before", "after"), strict=True):
        grid = np.full((len(plans), len(cols)), np.nan)
        for s in stats:
            grid[plans.index(s["plan"]), cols.index(s["cell"])] = s[f"ratio_{when}"]
        im = ax.imshow(grid, cmap="RdBu_r", norm=LogNorm(0.5, 2.0), aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_yticks(range(len(plans)), [f"{p} ({modes[p]})" for p in plans], fontsize=7)
        ax.set_xticks(range(len(cols)), [c.name.replace("/", "\n") for c in cols], fontsize=6)
        ax.set_title(f"measured / predicted, {'uncalibrated' if when == 'before' else 'calibrated (held-out repeats)'}",
                     fontsize=9)
        bar = fig.colorbar(im, ax=ax, fraction=0.02)
        bar.ax.minorticks_off()
        bar.set_ticks([0.5, 0.67, 0.8, 1.0, 1.25, 1.5, 2.0], labels=["0.5", "0.67", "0.8", "1", "1.25", "1.5", "2"])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def applies_to(scenario: str) -> dict:
    """What the terms were fitted against: the compute scales hold for these cost tables only; the
    link terms describe this runtime's protocol over a shaped loopback."""
    from splitrl.env.scenario import load_scenario_dict
    data, _ = load_scenario_dict(scenario)
    table = f"{data['model']}__{data['edge']}__{data['edge_weight_format']}"
    return {"model": data["model"], "edge_compute_scale": table,
            "cloud_compute_scale": f"{table} (this host served as the cloud)",
            "link_terms": "splitrl runtime frames over LinkProxy-shaped loopback (simplified TCP loss recovery)"}


def provenance(command: str, rows_path: Path) -> dict:
    import jax
    import scipy
    import torch
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        commit = ""
    return {"command": command, "measurements": str(rows_path), "git_commit": commit,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "host": platform.node(),
            "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "jax": jax.__version__, "scipy": scipy.__version__}


def calibrate_and_report(params, rows: list[dict], out: Path, command: str, rows_path: Path,
                         scenario: str) -> tuple[Path, dict]:
    """Fit, held-out errors, report.md, heatmap.png and calibration.json under `out`."""
    ok = [r for r in rows if r["status"] == "ok"]
    before = C.predict_rows(params, ok)
    after, fits = C.held_out(params, ok)
    stats = cell_stats(ok, before, after)
    summ = summary(stats)
    terms = C.fit(params, ok)
    fit_info = {"rows": len(ok), "rows_failed": len(rows) - len(ok), "objective": "least squares of predicted/measured - 1",
                "scenario": scenario, "held_out": {"method": "leave one repeat out", "folds": fits, **summ}}
    cal = C.write_calibration(out / "calibration.json", terms, applies_to(scenario), fit_info,
                              provenance(command, rows_path))
    heatmap(stats, out / "heatmap.png")
    (out / "report.md").write_text(report_text(stats, summ, terms, command, len(rows) - len(ok)))
    return cal, summ


def report_text(stats: list[dict], summ: dict, terms: dict, command: str, failed: int) -> str:
    b, a = summ["before"], summ["after"]
    lines = ["# Sim-to-real over a grid of links", "", f"`{command}`", "",
             f"{len(stats)} cells (link x partition), {stats[0]['n'] if stats else 0} repeats each; "
             f"{failed} requests failed. Error = mean over a cell's repeats of |predicted - measured| / measured; "
             "after calibration each repeat is predicted by a fit that left that repeat out.", "",
             "| | median cell error | worst cell error | worst cell | cells > 15 % |", "|---|---|---|---|---|",
             f"| uncalibrated | {100 * b['median_cell_mae']:.1f} % | {100 * b['worst_cell_mae']:.1f} % | "
             f"{b['worst_cell']} | {b['cells_over_target']} / {b['cells']} |",
             f"| calibrated (held out) | {100 * a['median_cell_mae']:.1f} % | {100 * a['worst_cell_mae']:.1f} % | "
             f"{a['worst_cell']} | {a['cells_over_target']} / {a['cells']} |", "",
             "Calibration (fitted on every repeat): " + ", ".join(f"{k} = {v:.4g}" for k, v in terms.items()), "",
             "| link | plan | mode | measured s | ratio before | ratio after | error before | error after |",
             "|---|---|---|---|---|---|---|---|"]
    for s in stats:
        lines.append(f"| {s['cell'].name} | {s['plan']} | {s['mode']} | {s['measured_s']:.3f} | {s['ratio_before']:.2f} | "
                     f"{s['ratio_after']:.2f} | {100 * s['mae_before']:.1f} % | {100 * s['mae_after']:.1f} % |")
    return "\n".join(lines) + "\n"
