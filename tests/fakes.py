"""A tiny stand-in for `splitrl.env` with exactly its interface (gymnax 1.0.1 API, `Observation`,
`Action`, `FlatSplitEnv`) and dynamics whose optimal policy is known, so agent tests can check that
learning happens without depending on the real environment.

Dynamics (one slot): the observation shows a target boundary `b*` (one-hot) and a target format
`f*` (one-hot), both drawn afresh every slot, plus the masks. Reward:
    1[boundary == b*] + 0.5·1[fmt == f*] + 0.5·mean_u 1[units_u == want_u(b*)]   (max 2.0 a slot)
with want_u(b) = 1 (edge) where unit_mask[b, u] and (u + b) is even, else 0. The target is always
allowed by the masks, so the optimal policy earns 2.0 a slot; a uniformly random one far less.
Episodes end only by the time limit (truncated); terminated is always False.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

INFO_KEYS = ("latency", "energy", "delta_ppl", "backlog", "bytes_sent", "served", "drops", "objective")


class Observation(struct.PyTreeNode):
    features: jax.Array        # f32[obs_dim]
    boundary_mask: jax.Array   # bool[num_boundaries]
    format_mask: jax.Array     # bool[num_formats]
    unit_mask: jax.Array       # bool[num_boundaries, num_units]


class Action(struct.PyTreeNode):
    boundary: jax.Array        # i32[]
    fmt: jax.Array             # i32[]
    units: jax.Array           # i32[num_units]


class FlatObservation(struct.PyTreeNode):
    features: jax.Array        # f32[obs_dim]
    action_mask: jax.Array     # bool[n]


@struct.dataclass
class FakeParams(environment.EnvParams):
    max_steps_in_episode: int = 8
    lyapunov_v: float = 1.0    # scales the reward: stands in for the real env's V


@struct.dataclass
class FakeState(environment.EnvState):
    target_boundary: jax.Array
    target_fmt: jax.Array
    boundary_mask: jax.Array
    format_mask: jax.Array
    time: int


class FakeSplitEnv(environment.Environment):
    def __init__(self, num_layers: int = 3, num_units: int = 4):
        super().__init__()
        self.num_boundaries = num_layers + 1
        self.num_formats = 3
        self.num_units = num_units
        self.obs_dim = self.num_boundaries + self.num_formats + 1
        rows = jnp.arange(self.num_boundaries)[:, None]
        cols = jnp.arange(num_units)[None, :]
        # Unit u of layer b may run on the edge when u <= b (the last boundary has no split layer).
        self.unit_mask = (cols <= rows) & (rows < num_layers)

    @property
    def default_params(self) -> FakeParams:
        return FakeParams()

    def want_units(self, boundary):
        u = jnp.arange(self.num_units)
        return (self.unit_mask[boundary] & ((u + boundary) % 2 == 0)).astype(jnp.int32)

    def _draw(self, key, time):
        kb, kf, kmb, kmf = jax.random.split(key, 4)
        target_b = jax.random.randint(kb, (), 0, self.num_boundaries)
        target_f = jax.random.randint(kf, (), 0, self.num_formats)
        bmask = jax.random.bernoulli(kmb, 0.5, (self.num_boundaries,)) | (jnp.arange(self.num_boundaries) == target_b)
        fmask = jax.random.bernoulli(kmf, 0.5, (self.num_formats,)) | (jnp.arange(self.num_formats) == target_f)
        return FakeState(target_boundary=target_b, target_fmt=target_f, boundary_mask=bmask,
                         format_mask=fmask, time=time)

    def get_obs(self, state, params=None, key=None) -> Observation:
        feats = jnp.concatenate([jax.nn.one_hot(state.target_boundary, self.num_boundaries),
                                 jax.nn.one_hot(state.target_fmt, self.num_formats),
                                 jnp.ones((1,))]).astype(jnp.float32)
        return Observation(features=feats, boundary_mask=state.boundary_mask,
                           format_mask=state.format_mask, unit_mask=self.unit_mask)

    def reset_env(self, key, params):
        state = self._draw(key, 0)
        return self.get_obs(state), state

    def step_env(self, key, state, action, params):
        hit_b = (action.boundary == state.target_boundary).astype(jnp.float32)
        hit_f = (action.fmt == state.target_fmt).astype(jnp.float32)
        hit_u = jnp.mean((action.units == self.want_units(state.target_boundary)).astype(jnp.float32))
        objective = hit_b + 0.5 * hit_f + 0.5 * hit_u
        infeasible = (~state.boundary_mask[action.boundary]) | (~state.format_mask[action.fmt]) | jnp.any(
            (action.units == 1) & ~self.unit_mask[action.boundary])
        reward = params.lyapunov_v * objective
        new_state = self._draw(key, state.time + 1)
        info = {k: jnp.float32(0.0) for k in INFO_KEYS}
        info["objective"] = objective
        info["latency"] = 1.0 - hit_b
        info["drops"] = infeasible.astype(jnp.float32)
        return self.get_obs(new_state), new_state, reward, jnp.array(False), info

    def is_terminated(self, state, params):
        return jnp.array(False)

    @property
    def name(self) -> str:
        return "FakeSplit-v0"

    def action_space(self, params=None):
        return spaces.Discrete(self.num_boundaries)

    def observation_space(self, params):
        return spaces.Box(0.0, 1.0, (self.obs_dim,), jnp.float32)


class FlatSplitEnv(environment.Environment):
    """Discrete(num_boundaries · num_formats): action a -> boundary a // F, format a % F, every unit the
    masks allow on the edge."""

    def __init__(self, env: FakeSplitEnv, params: FakeParams):
        super().__init__()
        self.env, self.params = env, params
        self.num_actions_ = env.num_boundaries * env.num_formats
        self.obs_dim = env.obs_dim

    @property
    def default_params(self):
        return self.params

    def _flat(self, obs: Observation) -> FlatObservation:
        mask = (obs.boundary_mask[:, None] & obs.format_mask[None, :]).reshape(-1)
        return FlatObservation(features=obs.features, action_mask=mask)

    def _action(self, a):
        b, f = a // self.env.num_formats, a % self.env.num_formats
        return Action(boundary=b, fmt=f, units=self.env.unit_mask[b].astype(jnp.int32))

    def reset_env(self, key, params):
        obs, state = self.env.reset_env(key, params)
        return self._flat(obs), state

    def step_env(self, key, state, action, params):
        obs, state, reward, term, info = self.env.step_env(key, state, self._action(action), params)
        return self._flat(obs), state, reward, term, info

    def is_terminated(self, state, params):
        return jnp.array(False)

    @property
    def num_actions(self) -> int:
        return self.num_actions_

    def action_space(self, params=None):
        return spaces.Discrete(self.num_actions_)


def make(num_layers: int = 3, num_units: int = 4):
    env = FakeSplitEnv(num_layers, num_units)
    return env, env.default_params
