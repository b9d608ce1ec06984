"""Per-seed response-time percentiles on a fleet, for the p95 comparisons in docs/fleet.md: each seed's p90
and p95 over every request (an unanswered request counts as +inf, as in the evaluation's table), the p95
over the answered requests only (the reading most generous to a policy that leaves requests unanswered),
and the unanswered share. The episodes are the evaluation's (`python -m splitrl.evaluation.fleet`, same
keys), so the numbers line up with its tables.

    PYTHONPATH=. .venv/bin/python scripts/fleet_percentiles.py --fleet llama-2-7b_1xa100_peak \
        --policies cloud_only --runs chosen=<run> --seeds 10
"""

from __future__ import annotations

import argparse

import numpy as np

from splitrl.evaluation import fleet as FE
from splitrl.evaluation.stats import request_times


def seed_percentiles(out: dict) -> dict[str, float]:
    times, answered = request_times({k: np.asarray(out[k], np.float64)
                                     for k in ("arrivals", "drops", "request_failed", "response_time")})
    return {"p90": FE._pct(times, 90), "p95": FE._pct(times, 95), "p95 answered": FE._pct(times[answered], 95),
            "unanswered": float(1.0 - answered.mean())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", default="llama-2-7b_1xa100_peak")
    ap.add_argument("--policies", nargs="+", default=["cloud_only"], choices=FE.POLICIES)
    ap.add_argument("--runs", nargs="*", default=[], metavar="[LABEL=]DIR")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threshold", type=float, default=8.0, help="the wait-threshold rule's τ (s; tuned at peak: 8)")
    ap.add_argument("--congestion", type=float, default=1000.0, help="congestion DPP's κ (tuned at peak: 1000)")
    a = ap.parse_args(argv)
    _, raw = FE.evaluate_fleet(a.fleet, tuple(a.policies), seeds=a.seeds, episodes=a.episodes, steps=a.steps,
                               grid=(a.threshold,), train_seeds=1, log=lambda *_: None, runs=a.runs,
                               congestion_grid=(a.congestion,))
    for name, outs in raw.items():
        per_seed = [seed_percentiles(o) for o in outs]
        for key in per_seed[0]:
            digits = 4 if key == "unanswered" else 1
            print(f"{name:28s} {key:13s}", " ".join(f"{s[key]:8.{digits}f}" for s in per_seed))


if __name__ == "__main__":
    main()
