"""A Gymnasium view of one SplitEnv (for Stable-Baselines3 and other non-JAX agents).

Observation: Box(features); action: Discrete over the flat subset (splitrl.env.flat). Infeasible
actions are projected onto the feasible set by the env (largest allowed boundary below, units that do
not fit go to the cloud); `action_masks()` returns the mask for maskable agents (sb3-contrib's
MaskablePPO reads it). One jitted step per call: for throughput, use the JAX env under vmap.
"""

from __future__ import annotations

import gymnasium
import jax
import numpy as np

from splitrl.env.features import FEATURE_BOUND
from splitrl.env.flat import FlatSplitEnv
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import EnvParams


class SplitGymEnv(gymnasium.Env):
    metadata = {"render_modes": []}

    def __init__(self, env: SplitEnv, params: EnvParams):
        self.flat = FlatSplitEnv(env, params)
        self.params = params
        self.observation_space = gymnasium.spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (env.obs_dim,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(self.flat.num_actions)
        self._key = jax.random.PRNGKey(0)
        self._state = None
        self._mask = np.asarray(self.flat.action_mask(params))
        self._reset = jax.jit(self.flat.reset)
        self._step = jax.jit(self.flat.step)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._key = jax.random.PRNGKey(seed)
        self._key, k = jax.random.split(self._key)
        obs, self._state = self._reset(k, self.params)
        return np.asarray(obs.features, dtype=np.float32), {}

    def step(self, action):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        self._key, k = jax.random.split(self._key)
        obs, state, reward, terminated, truncated, info = self._step(k, self._state, int(action), self.params)
        self._state = state
        out = {k: float(v) for k, v in info.items() if k in ("latency", "energy", "delta_ppl", "backlog", "bytes_sent",
                                                              "served", "drops", "objective")}
        obs_np = np.asarray(info["final_observation"].features if bool(truncated) else obs.features, dtype=np.float32)
        return obs_np, float(reward), bool(terminated), bool(truncated), out

    def action_masks(self) -> np.ndarray:
        return self._mask.copy()
