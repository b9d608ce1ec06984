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

from splitrl.env import rollout as R
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import Action


def random_split_action(env: SplitEnv, key: jax.Array, obs) -> Action:
    """A uniformly random feasible action (allowed boundary, format, units), from one random word:
    a categorical over 31 boundaries costs 31 draws, and draws dominate a small step on CPU."""
    bits = jax.random.bits(key, (), jnp.uint32)
    allowed = obs.boundary_mask
    n_allowed = allowed.sum()
    pick = (bits % n_allowed.astype(jnp.uint32)).astype(jnp.int32)          # index among the allowed boundaries
    b = jnp.argmax(jnp.cumsum(allowed) > pick).astype(jnp.int32)
    rest = bits // n_allowed.astype(jnp.uint32)
    fmt = (rest % env.num_formats).astype(jnp.int32)
    unit_bits = (rest // env.num_formats) >> jnp.arange(env.num_units, dtype=jnp.uint32) & 1
    units = (unit_bits.astype(bool) & obs.unit_mask[b]).astype(jnp.int32)
    return Action(boundary=b, fmt=fmt, units=units)


def make_rollout(env, params, n_envs: int, n_steps: int, policy):
    """A jitted function key -> sum of rewards, running n_envs x n_steps steps of `policy(key, obs)` through
    the one rollout loop (splitrl.env.rollout), auto-reset on: the work of a training rollout."""

    def act(obs, _state, policy_keys, _env_keys):
        return jax.vmap(policy)(policy_keys, obs), None

    def run(key):
        reset_key, key = jax.random.split(key)
        carry = R.start(env, params, jax.random.split(reset_key, n_envs))
        _, rewards = R.rollout(env, params, act, carry, jax.random.split(key, n_steps), R.training_keys(n_envs),
                               lambda s: s.reward.sum())
        return rewards.sum()

    return jax.jit(run)


def _time(fn, key, repeats: int) -> float:
    jax.block_until_ready(fn(key))  # compile
    best = float("inf")
    for i in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(jax.random.fold_in(key, i)))
        best = min(best, time.perf_counter() - t)
    return best


def bench_env(scenario: str = "default", env_counts=(1, 16, 256, 4096), n_steps: int = 200, repeats: int = 3,
              out: Path | None = None, device: str | None = None) -> list[dict]:
    import gymnax

    from splitrl.env import make
    dev = jax.devices(device)[0] if device else jax.devices()[0]
    env, params = make(scenario)
    cp_env, cp_params = gymnax.make("CartPole-v1")
    cp_policy = lambda k, obs: jax.random.randint(k, (), 0, 2)  # noqa: E731
    rows = []
    key = jax.random.PRNGKey(0)
    with jax.default_device(dev):
        for n in env_counts:
            t_split = _time(make_rollout(env, params, n, n_steps, lambda k, o: random_split_action(env, k, o)), key, repeats)
            t_cp = _time(make_rollout(cp_env, cp_params, n, n_steps, cp_policy), key, repeats)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rows.append({"envs": n, "split_steps_per_s": n * n_steps / t_split, "cartpole_steps_per_s": n * n_steps / t_cp,
                         "ratio": t_cp / t_split, "peak_rss_mb": rss})
    result = {"scenario": scenario, "device": str(dev), "steps_per_rollout": n_steps, "jax": jax.__version__,
              "host": platform.node(), "rows": rows}
    if out is not None:
        Path(out).write_text(json.dumps(result, indent=1))
    return rows
