"""One rollout loop for every consumer: PPO's trajectories, the train-time greedy and random-policy
evaluation, `splitrl-eval`'s common-random-number episodes and the throughput bench.

    carry, out = rollout(env, env_params, act, carry, xs, step_keys, record, auto_reset)

A batch of N envs steps once per element of `xs` under `lax.scan`. Per step:
  - `step_keys(x) -> (policy_keys[N], env_keys[N])` derives the step's keys from the scanned input
    (`training_keys` splits one key per step; evaluation folds the step index into per-episode roots);
  - `act(obs[N], state[N], policy_keys[N], env_keys[N]) -> (action[N], aux)` picks the actions (a
    learner returns its log-prob and value in `aux`; only the full-information oracle reads env_keys);
  - the env steps: `env.step` (gymnax auto-reset, `info["final_observation"]`) or, with
    `auto_reset=False`, `env.step_env` (an evaluation episode that never ends inside the horizon);
  - `record(Step) -> pytree` keeps what the caller needs, stacked over steps (unrecorded fields cost
    nothing: they are never stored).
The carry tracks the return of each env's episode in progress, so a finished episode's return is in
`Step.episode_return` without a host round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


class Carry(struct.PyTreeNode):
    obs: Any                  # [N] current observations
    state: Any                # [N] env states
    episode_return: jax.Array  # f32[N] return of the episode in progress


class Step(struct.PyTreeNode):
    obs: Any                  # the observation acted on
    state: Any                # the env state acted in
    action: Any
    aux: Any                  # what `act` returned beside the action
    reward: jax.Array         # f32[N]
    terminated: jax.Array     # bool[N]
    truncated: jax.Array      # bool[N]
    info: dict                # the env's info (with auto-reset: final_observation, terminated, truncated)
    episode_return: jax.Array  # f32[N]: the return of the episode that ended at this step, else 0


def start(env, env_params, reset_keys: jax.Array, reset: str = "reset") -> Carry:
    """The batch's first carry: one reset per key (`reset="reset_env"` for the raw reset)."""
    obs, state = jax.vmap(getattr(env, reset), (0, None))(reset_keys, env_params)
    return Carry(obs=obs, state=state, episode_return=jnp.zeros(reset_keys.shape[0], jnp.float32))


def training_keys(num_envs: int) -> Callable:
    """The key schedule of training and the bench: per step one key, split into a policy key and an env
    key, each split over the N envs."""
    def keys(key):
        act_key, env_key = jax.random.split(key)
        return jax.random.split(act_key, num_envs), jax.random.split(env_key, num_envs)
    return keys


def rollout(env, env_params, act: Callable, carry: Carry, xs, step_keys: Callable, record: Callable = lambda s: s,
            auto_reset: bool = True) -> tuple[Carry, Any]:
    """Step the batch once per element of `xs` (module docstring); returns (last carry, records [T, ...])."""

    def body(c: Carry, x):
        policy_keys, env_keys = step_keys(x)
        action, aux = act(c.obs, c.state, policy_keys, env_keys)
        if auto_reset:
            obs, state, reward, terminated, truncated, info = jax.vmap(env.step, (0, 0, 0, None))(
                env_keys, c.state, action, env_params)
        else:
            obs, state, reward, terminated, info = jax.vmap(env.step_env, (0, 0, 0, None))(
                env_keys, c.state, action, env_params)
            truncated = jnp.zeros_like(terminated)
        done = terminated | truncated
        ret = c.episode_return + reward
        step = Step(obs=c.obs, state=c.state, action=action, aux=aux, reward=reward, terminated=terminated, truncated=truncated,
                    info=info, episode_return=jnp.where(done, ret, 0.0))
        return Carry(obs=obs, state=state, episode_return=jnp.where(done, 0.0, ret)), record(step)

    return jax.lax.scan(body, carry, xs)


def info_metrics(info: dict, num_envs: int, agents: tuple[int, ...] = ()) -> dict[str, jax.Array]:
    """The env's per-env metrics from an info dict (f32[N] entries), without gymnax's bookkeeping. With
    `agents` (a fleet's (devices,)), per-device entries [N, devices] are averaged over the devices and
    the fleet-level ones [N] kept as they are."""
    skip = ("final_observation", "terminated", "truncated", "discount")
    out = {k: v.astype(jnp.float32) for k, v in info.items()
           if k not in skip and getattr(v, "shape", None) == (num_envs,)}
    if agents:
        out |= {k: v.astype(jnp.float32).mean(axis=tuple(range(1, 1 + len(agents)))) for k, v in info.items()
                if k not in skip and getattr(v, "shape", None) == (num_envs,) + agents}
    return out
