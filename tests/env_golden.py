"""Fixed-seed rollouts whose info sums pin the env's numbers (tests/test_env_golden.py). Run as a script
to (re)write tests/data/env_golden.json from the current code: only when the dynamics change on purpose."""

from __future__ import annotations

import hashlib
import json
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from splitrl.env import make
from splitrl.env import rollout as R
from splitrl.env.types import Action

GOLDEN = Path(__file__).parent / "data" / "env_golden.json"
# the plain env, every optional section, two other channel kinds and the cloud's load trace
SCENARIOS = ("default", "heat_s23_3g_bus", "session_s23_3g_bus", "battery_s23_outages", "outage_long", "trace_4g_bus")
FLEET, FLEET_DEVICES = "llama-2-7b_1xa100_low", 4
N_ENVS, N_STEPS = 32, 300     # past the 200-slot episode: the auto-reset is covered too


def fixed_actions(n_boundaries: int, n_units: int, shape: tuple[int, ...], seed: int = 0) -> Action:
    """A fixed random sequence of actions [T, *shape], infeasible ones included (the env projects them)."""
    rng = np.random.default_rng(seed)
    return Action(boundary=jnp.asarray(rng.integers(0, n_boundaries, shape), jnp.int32),
                  fmt=jnp.asarray(rng.integers(0, 3, shape), jnp.int32),
                  units=jnp.asarray(rng.integers(0, 2, shape + (n_units,)), jnp.int32))


@partial(jax.jit, static_argnums=(0, 3))
def _rollout(env, params, actions, start, key):
    def act(obs, _state, _pk, _ek):
        return None, None

    def body(carry, xs):
        action, k = xs
        policy_keys, env_keys = R.training_keys(N_ENVS)(k)
        obs, state, reward, term, trunc, info = jax.vmap(env.step, (0, 0, 0, None))(env_keys, carry[1], action, params)
        info = {k: v for k, v in info.items() if k not in ("final_observation", "terminated", "truncated")}
        return (obs, state), (reward, info, obs.features, trunc)

    reset_key, key = jax.random.split(key)
    carry = start(env, params, jax.random.split(reset_key, N_ENVS))
    return jax.lax.scan(body, (carry.obs, carry.state), (actions, jax.random.split(key, N_STEPS)))[1]


def summarise(out) -> dict:
    """Sum and mean (float64, on the host) of the reward, every info field and the observed features,
    and a digest of all of them (equal digests: bit-identical rollouts)."""
    reward, info, feats, trunc = jax.device_get(out)
    fields = {"reward": reward, "features": feats, "truncated": trunc, **info}
    digest = hashlib.sha256()
    res = {}
    for name in sorted(fields):
        a = np.asarray(fields[name])
        digest.update(name.encode() + a.tobytes())
        a = a.astype(np.float64)
        res[name] = {"sum": float(a.sum()), "mean": float(a.mean()), "abs_sum": float(np.abs(a).sum())}
    return {"fields": res, "digest": digest.hexdigest()}


def scenario_outputs(name: str):
    """The raw rollout (reward, info, features, truncated), time-major [N_STEPS, N_ENVS]."""
    env, params = make(name)
    actions = fixed_actions(env.num_boundaries, env.num_units, (N_STEPS, N_ENVS))
    return _rollout(env, params, actions, R.start, jax.random.PRNGKey(7))


def scenario_rollout(name: str) -> dict:
    return summarise(scenario_outputs(name))


def fleet_rollout() -> dict:
    from splitrl.bench.env import fleet_with_devices
    from splitrl.env.fleet import start
    env, params = fleet_with_devices(FLEET, FLEET_DEVICES)
    actions = fixed_actions(env.num_boundaries, env.num_units, (N_STEPS, N_ENVS, FLEET_DEVICES))
    return summarise(_rollout(env, params, actions, start, jax.random.PRNGKey(7)))


def compute_all() -> dict:
    return {name: scenario_rollout(name) for name in SCENARIOS} | {f"fleet:{FLEET}": fleet_rollout()}


if __name__ == "__main__":
    out = compute_all()
    if "--check" in sys.argv:
        old = json.loads(GOLDEN.read_text())
        for k, v in out.items():
            worst = max(((abs(f["sum"] - old[k]["fields"][n]["sum"]) / max(old[k]["fields"][n]["abs_sum"], 1e-30), n)
                         for n, f in v["fields"].items()))
            print(k, "bit-identical" if v["digest"] == old[k]["digest"] else f"differs: worst {worst[1]} by {worst[0]:.2e}")
    else:
        GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True))
        print(f"wrote {GOLDEN}")
