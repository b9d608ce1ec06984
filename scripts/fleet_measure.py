"""Fixed placements on the shipped LLaMA-2-7B fleets at low, medium and peak load: does the fleet env
produce cloud contention? Prints a markdown table (docs/fleet.md shows a run).

    PYTHONPATH=. .venv/bin/python scripts/fleet_measure.py --envs 64 --slots 200

Every policy and load runs the same episodes (common random numbers: the same keys); one compile serves
all of them (the placement and the params are arguments of the jitted rollout).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from splitrl.env import rollout as R
from splitrl.env.fleet import fixed_action, start
from splitrl.env.fleet_scenario import make_fleet_with_info
from splitrl.evaluation.stats import request_times

LOADS = ("low", "medium", "peak")
FIELDS = ("latency", "response_time", "arrivals", "drops", "request_failed", "cloud_wait", "cloud_util",
          "cloud_queue_s", "offloaded_work")


@partial(jax.jit, static_argnums=(0, 3, 4))
def measure(env, params, action, n_envs, n_slots, key):
    """One rollout of `n_envs` fleets for `n_slots` slots under a fixed placement; the FIELDS, time-major."""
    act = lambda obs, state, pk, ek: (jax.tree.map(lambda x: jnp.broadcast_to(x, (n_envs, *x.shape)), action), None)  # noqa: E731
    reset_key, key = jax.random.split(key)
    carry = start(env, params, jax.random.split(reset_key, n_envs))
    record = lambda s: {k: s.info[k] for k in FIELDS}  # noqa: E731
    return R.rollout(env, params, act, carry, jax.random.split(key, n_slots), R.training_keys(n_envs), record,
                     auto_reset=False)[1]


def summary(out: dict) -> dict:
    times, answered = request_times({k: np.asarray(out[k]) for k in ("arrivals", "drops", "request_failed",
                                                                        "response_time")})
    return {"latency": float(np.mean(out["latency"])),
            "response_mean": float(times[answered].mean()) if answered.any() else float("nan"),
            "p50": float(np.percentile(times, 50, method="inverted_cdf")),
            "p95": float(np.percentile(times, 95, method="inverted_cdf")),
            "unanswered": float(1.0 - answered.mean()), "wait": float(np.mean(out["cloud_wait"])),
            "util": float(np.mean(out["cloud_util"])), "queue_end": float(np.mean(out["cloud_queue_s"][-1]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envs", type=int, default=64)
    ap.add_argument("--slots", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", type=int, nargs="+", default=[4, 16], help="boundaries of the fixed splits (int8)")
    args = ap.parse_args()
    fleets = {load: make_fleet_with_info(f"llama-2-7b_1xa100_{load}") for load in LOADS}
    env, _, info = fleets["low"]
    cloud, edge = fixed_action(env, 0), fixed_action(env, env.n_layers, 0, True)
    policies = {"cloud-only": cloud, "edge-only": edge}
    policies |= {f"split b={b} int8": fixed_action(env, b, 1) for b in args.split}
    # a heterogeneous fixed placement: the devices that hold the whole model run it, the others offload
    fits = [bool(d.costs.boundary_mask[-1]) for d in info.devices]
    on_edge = jnp.asarray([fits[k] for k in info.device_type])
    names = "+".join(d.edge for d, ok in zip(info.devices, fits, strict=True) if ok)
    policies[f"edge-only on {names}, cloud-only elsewhere"] = jax.tree.map(
        lambda e, c: jnp.where(on_edge.reshape(-1, *([1] * (e.ndim - 1))), e, c), edge, cloud)
    print(f"N = {env.n_devices}, {args.envs} envs x {args.slots} slots, seed {args.seed}\n")
    print("| load | policy | mean service latency (s) | mean response (s) | p50 response (s) | p95 response (s) | "
          "unanswered | mean cloud wait (s) | mean cloud util | cloud queue at end (replica-s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    t0 = time.time()
    for load in LOADS:
        fenv, params, _ = fleets[load]
        for name, action in policies.items():
            s = summary(measure(fenv, params, action, args.envs, args.slots, jax.random.PRNGKey(args.seed)))
            print(f"| {load} | {name} | {s['latency']:.2f} | {s['response_mean']:.2f} | {s['p50']:.2f} | {s['p95']:.2f} | "
                  f"{s['unanswered']:.1%} | {s['wait']:.2f} | {s['util']:.2f} | {s['queue_end']:.1f} |", flush=True)
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
