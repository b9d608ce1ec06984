"""Chen et al.'s MDP (adaptive layer splitting, arXiv 2406.02616) around our env, for their baseline
(splitrl/baselines/chen.py trains it with our PPO):

  observation  f32[3] = (channel noise: the `snr` feature of the observation contract, i.e. (SNR_dB − 20)/10
                         when the scenario has analog noise, else 0; Rayleigh fading scale: log σ_h;
                         split point b / L)
  action       Discrete(3): the split point moves −1 / 0 / +1 (within the allowed interior splits
               1..b_max: their split is between layers, so neither cloud-only nor edge-only)
  reward       −(PPL_surrogate(noise, fading, b) / acc_ref + λ · b / L)   (λ·b/L: the UE's compute,
               ∝ 12·d·d_mid² FLOPs per layer on the edge, normalised by the whole model's)
  episode      5 steps (their setting); the channel evolves by our env's dynamics.
Their model-based trick: the reward's PPL comes from an MLP (`Surrogate`) fitted to measured records
instead of a measurement per step; the surrogate is part of their MDP, so it lives here.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from splitrl.env import features as F
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import Action, EnvParams, EnvState


# ----------------------------------------------------------------------------- features
def chen_features(env_params: EnvParams, state: EnvState, split, n_layers: int) -> jax.Array:
    """Their state (noise, fading scale, split) from our env's observable state."""
    noise = F.value("snr", state.snr_db, env_params, n_layers, jnp)
    return jnp.stack([noise, state.log_sigma_h, split / n_layers]).astype(jnp.float32)


def interior_splits(env_params: EnvParams, n_layers: int) -> tuple[int, int]:
    """(lowest, highest) allowed split in 1..L-1 (their split points are between layers)."""
    allowed = np.flatnonzero(np.asarray(env_params.costs.boundary_mask)[1:n_layers]) + 1
    if len(allowed) == 0:
        return 0, 0
    return int(allowed.min()), int(allowed.max())


def move_split(env_params: EnvParams, split, delta, lo: int, hi: int):
    """split + delta within [lo, hi], dropping to the largest allowed boundary <= it."""
    mask = env_params.costs.boundary_mask
    idx = jnp.arange(mask.shape[0])
    target = jnp.clip(split + delta, lo, hi)
    ok = mask & (idx <= target) & (idx >= lo)
    return jnp.where(ok.any(), jnp.max(jnp.where(ok, idx, -1)), lo).astype(jnp.int32)


# ----------------------------------------------------------------------------- the surrogate
class Surrogate(nn.Module):
    """MLP (noise, fading, split) -> log(1 + ΔPPL) (their reward model; log scale because ΔPPL under
    heavy loss is orders of magnitude above its typical values). `ppl(params, x)` is ΔPPL."""
    hidden: tuple[int, ...] = (64, 64)

    @nn.compact
    def __call__(self, x):
        for w in self.hidden:
            x = nn.relu(nn.Dense(w)(x))
        return nn.Dense(1)(x)[..., 0]


def surrogate_ppl(params, x):
    return jnp.expm1(jnp.maximum(Surrogate().apply(params, x), 0.0))


# ----------------------------------------------------------------------------- their MDP
@struct.dataclass
class ChenParams:
    inner: EnvParams
    surrogate: Any
    lam: jax.Array                   # weight of the UE compute cost
    max_steps_in_episode: jax.Array  # 5 in their paper


@struct.dataclass
class ChenState:
    inner: EnvState
    split: jax.Array                 # i32
    time: jax.Array                  # i32


class ChenEnv(environment.Environment[ChenState, ChenParams]):
    """Their MDP (module docstring) over our env's channel."""

    def __init__(self, env: SplitEnv, lo: int, hi: int):
        self.env, self.lo, self.hi = env, lo, hi

    def __hash__(self):
        return hash((ChenEnv, self.env, self.lo, self.hi))

    def __eq__(self, other):
        return isinstance(other, ChenEnv) and (self.env, self.lo, self.hi) == (other.env, other.lo, other.hi)

    def _obs(self, state: ChenState, params: ChenParams):
        return chen_features(params.inner, state.inner, state.split, self.env.n_layers)

    def reset_env(self, key, params: ChenParams):
        k_inner, k_split = jax.random.split(key)
        _, inner = self.env.reset_env(k_inner, params.inner)
        split = move_split(params.inner, jax.random.randint(k_split, (), self.lo, self.hi + 1), 0, self.lo, self.hi)
        state = ChenState(inner=inner, split=split, time=jnp.int32(0))
        return self._obs(state, params), state

    def step_env(self, key, state: ChenState, action, params: ChenParams):
        split = move_split(params.inner, state.split, action - 1, self.lo, self.hi)
        U = self.env.n_units
        _, inner, _, _, _ = self.env.step_env(key, state.inner, Action(split, jnp.int32(0), jnp.zeros(U, jnp.int32)),
                                              params.inner)
        new = ChenState(inner=inner, split=split, time=state.time + 1)
        x = chen_features(params.inner, inner, split, self.env.n_layers)
        ppl = surrogate_ppl(params.surrogate, x)
        reward = -(ppl / params.inner.reward.acc_ref + params.lam * split / self.env.n_layers)
        return self._obs(new, params), new, reward.astype(jnp.float32), jnp.bool_(False), {"ppl_surrogate": ppl}

    def action_space(self, params=None):
        return spaces.Discrete(3)

    def observation_space(self, params=None):
        return spaces.Box(-10.0, 10.0, (3,), jnp.float32)

    @property
    def num_actions(self) -> int:
        return 3
