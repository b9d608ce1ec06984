"""Throughput of random-policy rollouts (jit + vmap + lax.scan), beside gymnax CartPole-v1 in the
same process, so the ratio is meaningful on any machine."""

from __future__ import annotations

import json
import platform
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from splitrl.env import draws
from splitrl.env import rollout as R
from splitrl.env.fuse import last_axis_sum
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import Action


def random_split_action(env: SplitEnv, key: jax.Array, obs) -> Action:
    """A uniformly random feasible action from one random word (jax.random.bits, its hash written out:
    splitrl/env/draws.py), as a categorical over 31 boundaries would cost 31 draws: the boundary uniform
    over the allowed ones (the word modulo their number picks one), the format uniform over the three, each
    of the boundary layer's allowed units on the edge with probability 1/2 (the word's next digits), up to
    the modulo's bias (below 1e-5)."""
    bits = draws.bits(key, 1)[0]
    allowed = obs.boundary_mask.astype(jnp.uint32)
    n_allowed = last_axis_sum(allowed)
    pick = bits % n_allowed          # index among the allowed boundaries
    # the pick-th allowed boundary is the number of boundaries with at most `pick` allowed ones up to and
    # including them: a running count in adds that fuse (jnp.cumsum runs as a slow reduce-window on CPU)
    seen, b = jnp.uint32(0), jnp.int32(0)
    for i in range(allowed.shape[-1]):
        seen = seen + allowed[..., i]
        b = b + (seen <= pick)
    rest = bits // n_allowed
    fmt = (rest % env.num_formats).astype(jnp.int32)
    unit_bits = (rest // env.num_formats) >> jnp.arange(env.num_units, dtype=jnp.uint32) & 1
    units = (unit_bits.astype(bool) & obs.unit_mask[b]).astype(jnp.int32)
    return Action(boundary=b, fmt=fmt, units=units)


def random_fleet_action(env, key: jax.Array, obs) -> Action:
    """`random_split_action` for every device of a fleet (obs with a leading device axis [N])."""
    keys = jax.random.split(key, env.n_devices)
    return jax.vmap(lambda k, o: random_split_action(env.device, k, o))(keys, obs)


def make_rollout(env, params, n_envs: int, n_steps: int, policy, start=R.start):
    """A jitted function key -> sum of rewards, running n_envs x n_steps steps of `policy(key, obs)` through
    the one rollout loop (splitrl.env.rollout), auto-reset on: the work of a training rollout. `start` makes
    the first carry (`splitrl.env.fleet.start` for a fleet, whose returns are per device)."""

    def act(obs, _state, policy_keys, _env_keys):
        return jax.vmap(policy)(policy_keys, obs), None

    def run(key):
        reset_key, key = jax.random.split(key)
        carry = start(env, params, jax.random.split(reset_key, n_envs))
        _, rewards = R.rollout(env, params, act, carry, jax.random.split(key, n_steps), R.training_keys(n_envs),
                               lambda s: s.reward.sum())
        return rewards.sum()

    return jax.jit(run)


def _time(fn, key, repeats: int) -> tuple[float, float]:
    """(best seconds of `repeats` calls, compile seconds) of a jitted key -> array function."""
    t = time.perf_counter()
    compiled = fn.lower(key).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(key))  # first run: allocations
    best = float("inf")
    for i in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(jax.random.fold_in(key, i)))
        best = min(best, time.perf_counter() - t)
    return best, compile_s


def cartpole_rollout(n_envs: int, n_steps: int):
    """gymnax CartPole-v1 under a random policy, through the same rollout loop (the yardstick)."""
    import gymnax
    env, params = gymnax.make("CartPole-v1")
    return make_rollout(env, params, n_envs, n_steps, lambda k, obs: jax.random.randint(k, (), 0, 2))


def against_cartpole(rollout, steps: int, cp_envs: int, n_steps: int, repeats: int) -> dict:
    """Time `rollout` (`steps` agent steps a call) and a CartPole rollout of cp_envs x n_steps steps in this
    process: steps/s of both, the ratio of their rates, compile seconds and the peak RSS so far."""
    key = jax.random.PRNGKey(0)
    t, compile_s = _time(rollout, key, repeats)
    t_cp, cp_compile_s = _time(cartpole_rollout(cp_envs, n_steps), key, repeats)
    steps_per_s, cp_steps_per_s = steps / t, cp_envs * n_steps / t_cp
    return {"steps_per_s": steps_per_s, "cartpole_steps_per_s": cp_steps_per_s,
            "ratio": steps_per_s / cp_steps_per_s, "compile_s": compile_s, "cartpole_compile_s": cp_compile_s,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _write(result: dict, out: Path | None) -> list[dict]:
    result |= {"jax": jax.__version__, "host": platform.node()}
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=1))
    return result["rows"]


def bench_env(scenario: str = "default", env_counts=(1, 16, 256, 4096), n_steps: int = 200, repeats: int = 3,
              out: Path | None = None, device: str | None = None) -> list[dict]:
    from splitrl.env import make
    dev = jax.devices(device)[0] if device else jax.devices()[0]
    env, params = make(scenario)
    policy = lambda k, o: random_split_action(env, k, o)  # noqa: E731
    rows = []
    with jax.default_device(dev):
        for n in env_counts:
            r = against_cartpole(make_rollout(env, params, n, n_steps, policy), n * n_steps, n, n_steps, repeats)
            rows.append({"envs": n, "split_steps_per_s": r.pop("steps_per_s"), **r})
    return _write({"scenario": scenario, "device": str(dev), "steps_per_rollout": n_steps, "rows": rows}, out)


def fleet_with_devices(fleet: str, n_devices: int | None):
    """(FleetEnv, FleetParams) of a fleet (splitrl/conf/fleet name, path or dict), with n_devices overridden."""
    from splitrl.env.fleet_scenario import load_fleet_dict, make_fleet
    data = dict(load_fleet_dict(fleet)[0])
    if n_devices is not None:
        data["n_devices"] = n_devices
    return make_fleet(data)


def bench_fleet(fleet: str = "llama-2-7b_1xa100_peak", n_devices: int | None = 64, env_counts=(4096,),
                n_steps: int = 20, repeats: int = 3, out: Path | None = None, device: str | None = None) -> list[dict]:
    """Device-steps/s of random-policy fleet rollouts (envs x devices x steps per call) beside CartPole
    with envs x devices envs: the same number of agent steps per call, so the ratio compares like with like."""
    from splitrl.env.fleet import start
    dev = jax.devices(device)[0] if device else jax.devices()[0]
    env, params = fleet_with_devices(fleet, n_devices)
    policy = lambda k, o: random_fleet_action(env, k, o)  # noqa: E731
    rows = []
    with jax.default_device(dev):
        for n in env_counts:
            width = n * env.n_devices
            rollout = make_rollout(env, params, n, n_steps, policy, start)
            r = against_cartpole(rollout, width * n_steps, width, n_steps, repeats)
            rows.append({"envs": n, "devices": env.n_devices, "device_steps_per_s": r.pop("steps_per_s"), **r})
    return _write({"fleet": fleet, "device": str(dev), "steps_per_rollout": n_steps, "rows": rows}, out)
