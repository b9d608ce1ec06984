"""Does looking ahead at the edge's heat pay? Myopic DPP that prices the edge as if it were `delta` K hotter
than it is (a hand-written anticipation of the throttling its edge work will cause), on the evaluation's
episodes (the same keys as `splitrl-eval`), for a few margins. docs/evaluation.md ("Heat") shows a run.

    PYTHONPATH=. .venv/bin/python scripts/heat_margin.py --scenario heat_s23_3g_bus --margins 0,2,4,6,8
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from splitrl.baselines import make_baseline
from splitrl.evaluation.run import episode_keys, rollout, scenario_spec
from splitrl.evaluation.stats import seed_stats, t_interval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="heat_s23_3g_bus")
    ap.add_argument("--margins", default="0,2,4,6,8", help="K, comma-separated")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=4)
    a = ap.parse_args()
    env, params, spec = scenario_spec(a.scenario)
    if not env.heat:
        raise SystemExit(f"{a.scenario}: the edge does not heat in this scenario (no heat section)")
    steps = int(params.max_steps_in_episode)
    policy = make_baseline("heat_dpp").bind(env, params)    # splitrl/baselines/dpp.py HeatDPP
    candidates = policy.init(env, params, spec)               # the margin is data: one compile for every margin
    base = None
    print("| margin (K) | objective per seed | mean | vs margin 0 (paired) | throttled | peak temp (°C) |")
    print("|---:|---|---:|---:|---:|---:|")
    for margin in (float(m) for m in a.margins.split(",")):
        pparams = candidates | {"margin": jnp.float32(margin)}
        stats = []
        for seed in range(a.seeds):
            ek, pk = episode_keys(spec.name, seed, a.episodes)
            stats.append(seed_stats(jax.device_get(rollout(env, policy, params, pparams, ek, pk, steps))))
        obj = np.array([s["objective"] for s in stats])
        base = obj if base is None else base
        d, half = t_interval(obj - base)
        print(f"| {margin:g} | {', '.join(f'{o:.4f}' for o in obj)} | {obj.mean():.4f} | {d:+.4f} ± {half:.4f} | "
              f"{np.mean([s['throttled'] for s in stats]):.2f} | {np.mean([s['temp_max'] for s in stats]):.1f} |", flush=True)


if __name__ == "__main__":
    main()
