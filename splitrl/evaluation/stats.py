"""Per-seed statistics of evaluation episodes, then the mean and a 95 % Student-t interval over seeds."""

from __future__ import annotations

import math

import numpy as np

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
