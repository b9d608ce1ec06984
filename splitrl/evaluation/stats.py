"""Per-seed statistics of evaluation episodes, then the mean and a 95 % Student-t interval over seeds."""

from __future__ import annotations

import math

import numpy as np

METRICS = ("latency_mean", "latency_p50", "latency_p95", "latency_p99", "service_p95", "energy", "delta_ppl",
           "backlog_mean", "backlog_max", "backlog_growth", "objective", "return", "drops", "timed_out", "failed",
           "fail_rate", "cloud_wait", "edge_frac", "boundary", "throttled", "speed_lost", "temp_max", "migration_mb",
           "migration_s", "soc_end", "soc_min")
# The edge's state that outlives a slot (heat, conversations, the battery), paired like the objective: each
# stateful scenario is about one of them (time throttled, KV bytes moved, charge left). +1: higher is better.
STATE_METRICS = {"throttled": -1, "speed_lost": -1, "temp_max": -1, "migration_mb": -1, "soc_end": 1, "soc_min": 1}
PAIRED_METRICS = ("objective", *STATE_METRICS)
LABELS = {"latency_mean": "response mean (s)", "latency_p50": "p50 (s)", "latency_p95": "p95 (s)",
          "latency_p99": "p99 (s)", "service_p95": "service p95, per slot (s)", "energy": "energy/req (J)",
          "delta_ppl": "ΔPPL", "backlog_mean": "backlog", "fail_rate": "unanswered", "cloud_wait": "cloud wait (s)",
          "backlog_max": "max backlog", "backlog_growth": "backlog growth (req/slot)", "objective": "DPP objective",
          "return": "return", "drops": "drops/ep", "timed_out": "timeouts", "failed": "failed",
          "edge_frac": "edge units", "boundary": "boundary", "throttled": "throttled (share of slots)",
          "speed_lost": "edge speed lost (mean)",
          "temp_max": "peak edge temp (°C)", "migration_mb": "KV moved (MB/slot)", "migration_s": "moving (s/slot)",
          "soc_end": "charge at the end", "soc_min": "lowest end charge"}


def request_times(out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(response time of every request that arrived, whether it got an answer), pooled over episodes.
    A slot's arrivals wait behind the backlog, then are served (`info["response_time"]`: queueing plus
    service); an arrival dropped at the full queue, or of a request type that failed in that slot, never
    gets an answer: its response time is +inf, so it counts in every percentile it exceeds."""
    arrivals = np.rint(out["arrivals"]).astype(np.int64).ravel()
    dropped = np.minimum(np.rint(out["drops"]).astype(np.int64).ravel(), arrivals)
    failed = out["request_failed"].ravel() > 0
    answered = np.where(failed, 0, arrivals - dropped)
    times = np.concatenate([np.repeat(out["response_time"].ravel(), answered),
                            np.full(int((arrivals - answered).sum()), np.inf)])
    return times, np.isfinite(times)


def seed_stats(out: dict[str, np.ndarray]) -> dict[str, float]:
    """Statistics of one seed's episodes ({key: [N, T]} from `rollout`). Response-time percentiles are over
    requests (queueing wait + service; unanswered requests count as +inf); the mean is over answered
    requests; `service_p95` is the old per-slot figure (one request's service time per slot, no queueing).
    Backlog growth is the least-squares slope of the episode-mean backlog over the slots (requests per
    slot: > 0 means the queue is not stable over the horizon)."""
    times, answered = request_times(out)
    # the empirical quantile (no interpolation: between two unanswered requests it would be inf - inf)
    pct = (lambda p: float(np.percentile(times, p, method="inverted_cdf"))) if times.size else (lambda p: float("nan"))
    q = out["backlog"].mean(0)
    t = np.arange(q.shape[0], dtype=np.float64)
    slope = float(np.polyfit(t, q, 1)[0]) if q.shape[0] > 1 else 0.0
    return {"latency_mean": float(times[answered].mean()) if answered.any() else float("nan"),
            "latency_p50": pct(50), "latency_p95": pct(95), "latency_p99": pct(99),
            "service_p95": float(np.percentile(out["latency"], 95)),
            "energy": float(out["energy"].mean()), "delta_ppl": float(out["delta_ppl"].mean()),
            "backlog_mean": float(out["backlog"].mean()), "backlog_max": float(out["backlog"].max()),
            "backlog_growth": slope, "objective": float(out["objective"].mean()),
            "return": float(out["reward"].sum(1).mean()), "drops": float(out["drops"].sum(1).mean()),
            "timed_out": float(out["timed_out"].mean()), "failed": float(out["failed"].sum(1).mean()),
            "fail_rate": float(1.0 - answered.mean()) if times.size else 0.0,
            "cloud_wait": float(out["cloud_wait"].mean()),
            "edge_frac": float(out["edge_frac"].mean()), "boundary": float(out["boundary"].mean()),
            # the edge's heat (splitrl/env/heat.py): constant where the scenario has none
            "throttled": float((out["edge_speed"] < 1.0).mean()) if "edge_speed" in out else 0.0,
            # how hard: where the phone is throttled in almost every slot whatever the policy, the share above
            # cannot tell policies apart, the mean clock cut can
            "speed_lost": float((1.0 - out["edge_speed"]).mean()) if "edge_speed" in out else 0.0,
            "temp_max": float(out["temp_c"].max(1).mean()) if "temp_c" in out else float("nan"),
            # conversations (splitrl/env/sessions.py `migration`): 0 where the scenario has none
            "migration_mb": float(out["migration_bytes"].mean() / 1e6) if "migration_bytes" in out else 0.0,
            "migration_s": float(out["migration_s"].mean()) if "migration_s" in out else 0.0,
            # the battery: 1 where the scenario has none
            "soc_end": float(out["soc"][:, -1].mean()) if "soc" in out else 1.0,
            "soc_min": float(out["soc"][:, -1].min()) if "soc" in out else 1.0}


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of a Student-t confidence interval over seeds (0 half-width for one seed)."""
    from scipy import stats
    v = np.asarray(values, np.float64)
    if np.isinf(v).any():   # some seed left requests unanswered beyond this percentile
        return float(v.max()), float("nan")
    if v.size < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))


def summarise(per_seed: list[dict[str, float]]) -> dict[str, float]:
    row = {}
    for m in METRICS:
        mean, half = t_interval(np.array([s[m] for s in per_seed]))
        row[m], row[f"{m}_ci"] = mean, half
    for m in PAIRED_METRICS:   # for paired comparisons
        row[f"{m}_seeds"] = [float(s[m]) for s in per_seed]
    return row


PAIRED_REFERENCES = ("myopic_dpp", "cloud_only")


def add_paired(rows: list[dict], references=PAIRED_REFERENCES, group: str = "scenario") -> list[dict]:
    """Each row's objective minus a reference policy's on the same scenario (or whatever `group` names,
    e.g. the fleet), seed by seed, with a 95 % Student-t interval over seeds (`objective_vs_<ref>`,
    `_ci`); the same for the state metrics where rows carry their seeds (`throttled_vs_<ref>`, ...).
    Every policy meets the same episodes (common random numbers), so the paired interval is far tighter
    than the two unpaired ones: it is the one that says whether a difference is real. Negative: better
    than the reference (for the objective)."""
    for r in rows:
        for ref in references:
            other = [o for o in rows if o[group] == r[group] and o["policy"] == ref]
            if not other or len(other[0]["objective_seeds"]) != len(r["objective_seeds"]):
                continue
            for m in PAIRED_METRICS:
                if f"{m}_seeds" in r and f"{m}_seeds" in other[0]:
                    diff = np.asarray(r[f"{m}_seeds"]) - np.asarray(other[0][f"{m}_seeds"])
                    r[f"{m}_vs_{ref}"], r[f"{m}_vs_{ref}_ci"] = t_interval(diff)
    return rows
