"""Flat interfaces for flat agents: one discrete action over a documented subset of partitions.

Flat action a in [0, (L+1) * 3 * 3): boundary b = a // 9, format f = (a // 3) % 3, pattern = a % 3:
  0 "layer"      no unit of layer b on the edge (a pure layer split at b)
  1 "attn"       every attention unit of layer b on the edge, its FFN on the cloud
  2 "half_attn"  the first half (rounded up) of layer b's attention units on the edge
The mask allows an action when its boundary fits and every unit of its pattern may run on the edge;
at b = L (edge-only) and b = 0 with pattern 0 (cloud-only) the format is irrelevant, so only f = 0 is
allowed there, as only pattern 0 is at b = L: the subset has no duplicates.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from splitrl.env.features import FEATURE_BOUND
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import Action, EnvParams, EnvState

PATTERNS = ("layer", "attn", "half_attn")


@struct.dataclass
class FlatObservation:
    features: jax.Array     # f32[obs_dim]
    action_mask: jax.Array  # bool[num_actions]


def pattern_units(unit_is_attn: np.ndarray) -> np.ndarray:
    """[3, U] edge masks of the three patterns."""
    attn = np.asarray(unit_is_attn, dtype=bool)
    half = attn & (np.cumsum(attn) <= -(-attn.sum() // 2))
    return np.stack([np.zeros_like(attn), attn, half]).astype(np.int32)


class FlatSplitEnv(environment.Environment[EnvState, EnvParams]):
    """SplitEnv behind a Discrete action space; the observation carries the flat action mask."""

    def __init__(self, env: SplitEnv, params: EnvParams):
        self.env = env
        self.patterns = pattern_units(np.asarray(params.costs.unit_is_attn))  # static numpy [3, U]

    @property
    def default_params(self) -> EnvParams:
        return self.env.default_params

    @property
    def num_actions(self) -> int:
        return self.env.num_boundaries * self.env.num_formats * len(PATTERNS)

    @property
    def obs_dim(self) -> int:
        return self.env.obs_dim

    @property
    def name(self) -> str:
        return f"Flat{self.env.name}"

    def to_action(self, a: jax.Array) -> Action:
        P, F = len(PATTERNS), self.env.num_formats
        return Action(boundary=(a // (F * P)).astype(jnp.int32), fmt=((a // P) % F).astype(jnp.int32),
                      units=jnp.asarray(self.patterns)[a % P])

    def action_mask(self, params: EnvParams) -> jax.Array:
        c = params.costs
        L = self.env.n_layers
        b = jnp.arange(self.env.num_boundaries)[:, None, None]
        f = jnp.arange(self.env.num_formats)[None, :, None]
        p = jnp.arange(len(PATTERNS))[None, None, :]
        # every unit of the pattern must be allowed on the edge at that boundary (b = L: no units)
        unit_rows = jnp.concatenate([c.unit_mask[:L], jnp.zeros_like(c.unit_mask[:1])], axis=0)
        pats = jnp.asarray(self.patterns, dtype=bool)
        fits = jnp.all(~pats[None] | unit_rows[:, None, :], axis=-1)  # [L+1, P]
        ok = c.boundary_mask[:, None, None] & fits[:, None, :]
        nonempty = jnp.any(pats, axis=-1)[None, None, :]
        ok &= ~((b == L) & nonempty)                               # edge-only: units are meaningless
        ok &= ~(((b == L) | ((b == 0) & (p == 0))) & (f > 0))      # nothing crosses: one format
        return ok.reshape(-1)

    def _obs(self, obs, params) -> FlatObservation:
        return FlatObservation(features=obs.features, action_mask=self.action_mask(params))

    def reset_env(self, key, params):
        obs, state = self.env.reset_env(key, params)
        return self._obs(obs, params), state

    def step_env(self, key, state, action, params):
        obs, state, reward, done, info = self.env.step_env(key, state, self.to_action(action), params)
        return self._obs(obs, params), state, reward, done, info

    def __eq__(self, other) -> bool:
        return isinstance(other, FlatSplitEnv) and self.env == other.env and np.array_equal(self.patterns, other.patterns)

    def __hash__(self) -> int:
        return hash((FlatSplitEnv, self.env, self.patterns.tobytes()))

    def reset(self, key, params=None):
        return self._reset_jit(key, self.default_params if params is None else params)

    @partial(jax.jit, static_argnames=("self",))
    def _reset_jit(self, key, params):
        return self.reset_env(key, params)

    def step(self, key, state, action, params=None):
        return self._step_jit(key, state, action, self.default_params if params is None else params)

    @partial(jax.jit, static_argnames=("self",))
    def _step_jit(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, self.to_action(action), params)
        info = {**info, "final_observation": self._obs(info["final_observation"], params)}
        return self._obs(obs, params), state, reward, terminated, truncated, info

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.num_actions)

    def observation_space(self, params=None) -> spaces.Dict:
        return spaces.Dict({"features": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (self.obs_dim,), jnp.float32),
                            "action_mask": spaces.Box(0, 1, (self.num_actions,), jnp.bool_)})
