"""Writers: Markdown/CSV/JSON tables of the evaluation rows, and the Splitwise claims table."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np

from splitrl.evaluation.stats import LABELS, STATE_METRICS, t_interval

TABLE_COLUMNS = ("objective", "latency_mean", "latency_p50", "latency_p95", "latency_p99", "service_p95", "energy",
                 "delta_ppl", "fail_rate", "backlog_mean", "backlog_max", "backlog_growth")


def fmt_number(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if not math.isfinite(x):
        return "nan"
    if x == 0:
        return "0"
    mag = abs(x)
    return f"{x:.3g}" if 1e-3 <= mag < 1e4 else f"{x:.2e}"


def paired_cell(row: dict, ref: str) -> str:
    """`−0.10 ± 0.02 (better)`: the paired difference to `ref` and whether its interval excludes 0."""
    d, h = row.get(f"objective_vs_{ref}", math.nan), row.get(f"objective_vs_{ref}_ci", math.nan)
    if row["policy"] == ref or not math.isfinite(d):
        return "·"
    return difference_cell(d, h)


def difference_cell(d: float, h: float, higher_better: bool = False) -> str:
    """A paired difference `d ± h` and its verdict: better or worse when the interval excludes 0, else tie
    (lower is better unless `higher_better`)."""
    below, above = d + h < 0, d - h > 0
    verdict = "tie" if not (below or above) else "better" if below != higher_better else "worse"
    return f"{fmt_number(d)} ± {fmt_number(h)} ({verdict})"


def paired_matrix(rows: list[dict]) -> list[str]:
    """Markdown lines: every row's objective minus every other row's, seed by seed (rows of one scenario or
    fleet, each with `objective_seeds`), each worded by `difference_cell`. Read along a row: "better" means the
    row's policy is better than the column's, outside the 95 % interval."""
    names = [r["policy"] for r in rows]
    lines = ["| row − column | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        cells = []
        for o in rows:
            a, b = np.asarray(r["objective_seeds"]), np.asarray(o["objective_seeds"])
            if o is r or a.shape != b.shape:
                cells.append("·")
                continue
            cells.append(difference_cell(*t_interval(a - b)))
        lines.append(f"| {r['policy']} | " + " | ".join(cells) + " |")
    return lines


HEAT_COLUMNS = ("throttled", "speed_lost", "temp_max")   # added where some policy throttled the edge (splitrl/env/heat.py)
SESSION_COLUMNS = ("migration_mb", "migration_s")   # added where some policy moved a conversation's KV cache
BATTERY_COLUMNS = ("soc_end", "soc_min", "fail_rate")   # added where the edge runs on a battery


def markdown_table(rows: list[dict], columns=TABLE_COLUMNS) -> str:
    """One Markdown table per scenario: mean ± 95 % half-width over seeds (with the edge's heat, the KV moved
    and the battery where a scenario has them)."""
    out, base = [], columns
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        rs = [r for r in rows if r["scenario"] == scen]
        r0 = rs[0]
        columns = (base + (HEAT_COLUMNS if any(r.get("throttled", 0) > 0 for r in rs) else ())
                   + (SESSION_COLUMNS if any(r.get("migration_mb", 0) > 0 for r in rs) else ())
                   + (tuple(c for c in BATTERY_COLUMNS if c not in base) if any(r.get("soc_end", 1) < 1 for r in rs)
                      else ()))
        out.append(f"### {scen} ({r0['model']} on {r0['edge']}; {r0['seeds']} seeds x {r0['episodes']} episodes x "
                   f"{r0['steps']} slots)\n")
        paired = "objective_vs_myopic_dpp" in r0
        out.append("| policy | " + " | ".join(LABELS[c] for c in columns) + (" | vs myopic DPP" if paired else "") + " |")
        out.append("|---|" + "---:|" * (len(columns) + paired))
        best = min(r["objective"] for r in rs if r["policy"] != "oracle_dpp")
        for r in rs:
            name = r["policy"] + (" (reads the future)" if r["policy"] == "oracle_dpp" else "")
            if r["policy"] == "edge_only" and not r["edge_fits"]:
                name += " (does not fit: deepest split)"
            cells = [f"{fmt_number(r[c])} ± {fmt_number(r[c + '_ci'])}" for c in columns]
            if r["objective"] == best:
                cells[0] = f"**{cells[0]}**"
            if paired:
                cells.append(paired_cell(r, "myopic_dpp"))
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_tables(rows: list[dict], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "results.csv", "json": out_dir / "results.json", "md": out_dir / "results.md"}
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
    paths["json"].write_text(json.dumps(rows, indent=1))
    paths["md"].write_text("Mean ± half-width of a 95 % Student-t interval over seeds; every number from the env's "
                           "`info`. Bold: the best objective of a causal policy. \"vs myopic DPP\": the objective "
                           "minus myopic DPP's on the same episodes, seed by seed (paired; negative is better).\n\n"
                           + markdown_table(rows))
    return paths


COMPARED = ("hppo", "myopic_dpp", "cloud_only", "oracle_dpp")
COMPARED_COLUMNS = ("objective", "latency_p95", "latency_p99", "energy", "delta_ppl")


def comparison_markdown(rows: list[dict], policies=COMPARED, columns=COMPARED_COLUMNS) -> str:
    """The learned policy beside the causal controller it is built on, the safe default and the
    full-information reference: a summary line per scenario (objectives, HPPO's paired differences, the
    oracle's gain over cloud-only), then each scenario's metrics for those four policies."""
    scens = [s for s in dict.fromkeys(r["scenario"] for r in rows)
             if {r["policy"] for r in rows if r["scenario"] == s} >= set(policies)]
    me = policies[0]
    out = [f"| scenario | {' | '.join(policies)} | {me} vs myopic_dpp | {me} vs cloud_only | oracle gain over cloud_only |",
           "|---|" + "---:|" * (len(policies) + 3)]
    states = []
    for s in scens:
        by = {r["policy"]: r for r in rows if r["scenario"] == s}
        states += state_lines(by, s, me)
        objs = [f"{fmt_number(by[p]['objective'])} ± {fmt_number(by[p]['objective_ci'])}" for p in policies]
        gain = 1 - by["oracle_dpp"]["objective"] / by["cloud_only"]["objective"]
        out.append(f"| {s} | {' | '.join(objs)} | {paired_cell(by[me], 'myopic_dpp')} | "
                   f"{paired_cell(by[me], 'cloud_only')} | {100 * gain:.1f} % |")
    out += [""] + states
    if scens:
        by = {r["policy"]: r for r in rows if r["scenario"] == scens[0]}
        out.append(f"Objective: mean ± 95 % t-interval over {by[me]['seeds']} seeds x {by[me]['episodes']} episodes; "
                   f"{me} trained with {by[me].get('train_seeds', 1)} seed(s) per scenario (evaluation seed s runs "
                   f"training seed s mod n). Differences are paired per seed on the same episodes; 'tie' when the "
                   f"interval holds 0.\n")
    for s in scens:
        out.append(markdown_table([r for r in rows if r["scenario"] == s and r["policy"] in policies], columns))
    return "\n".join(out)


def state_lines(by: dict, scenario: str, me: str, ref: str = "myopic_dpp") -> list[str]:
    """What a stateful scenario is about (time throttled, KV moved, charge left), `me` minus `ref` paired per
    seed: one line where some policy's state differs from another's (none in a scenario without heat,
    conversations or a battery, where every policy reads the same constant)."""
    cells = [f"{LABELS[m]} {difference_cell(by[me][f'{m}_vs_{ref}'], by[me][f'{m}_vs_{ref}_ci'], sign > 0)}"
             for m, sign in STATE_METRICS.items()
             if math.isfinite(by[me].get(f"{m}_vs_{ref}", math.nan)) and len({round(r[m], 9) for r in by.values()}) > 1]
    return [f"{scenario}, {me} − {ref} (paired): " + "; ".join(cells) + ".", ""] if cells else []


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
