"""One-slot controllers: greedy latency and myopic drift-plus-penalty at the bandwidth estimate, and
the full-information DPP oracle (an upper reference that reads the slot's true channel)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from splitrl.baselines.base import PolicyBase
from splitrl.env.dpp import candidate_actions, candidate_costs, myopic_action, pick
from splitrl.env.split_env import SplitEnv, estimated_conditions
from splitrl.env.types import Action


@dataclasses.dataclass(frozen=True)
class GreedyLatency(PolicyBase):
    """Myopic: the placement with the lowest expected latency for this slot's request at the
    bandwidth *estimate* (and last slot's RTT, loss, SNR, cloud load), over the count-canonical
    candidates. Ignores energy, accuracy and queues."""
    name: str = "greedy_latency"

    def init(self, env, env_params, spec=None, key=None):
        return candidate_actions(env, env_params, exhaustive=False)

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        m = candidate_costs(env_params, pparams, state.prompt_len, state.output_len, estimated_conditions(state, env_params))
        return pick(pparams, jnp.argmin(m["latency"]))


@dataclasses.dataclass(frozen=True)
class MyopicDPP(PolicyBase):
    """Myopic drift-plus-penalty at the *estimate*: minimises the env's one-slot objective (penalty +
    queue and virtual-queue drift) with the bandwidth estimate, last slot's RTT/loss/SNR/load and the
    expected arrivals in place of the slot's unknown truth. The causal twin of the oracle (Neely's
    classic DPP controller); over the count-canonical candidates."""
    name: str = "myopic_dpp"

    def init(self, env, env_params, spec=None, key=None):
        return candidate_actions(env, env_params, exhaustive=False)

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return myopic_action(env_params, state, pparams)


@dataclasses.dataclass(frozen=True)
class Oracle(PolicyBase):
    """FULL-INFORMATION MYOPIC DPP ORACLE: an upper reference, not a deployable policy. It READS THE
    FUTURE: for every count-canonical candidate it runs `env.step_env(step_key, state, a)` with the
    very key and state the env will step with, so it sees the slot's true bandwidth, RTT, fading,
    cloud load and arrivals, and picks the minimum `info["objective"]`. Exact per slot over the whole
    structured space when same-kind units cost the same (see the module docstring); over an
    episode it can lose (it is myopic: it ignores what its choice does to the queues later)."""
    env: SplitEnv = None
    name: str = "oracle_dpp"

    def bind(self, env, env_params):
        return dataclasses.replace(self, env=env)

    def init(self, env, env_params, spec=None, key=None):
        return candidate_actions(env, env_params)

    def objectives(self, actions: Action, state, env_params, step_key) -> jax.Array:
        """The one-slot objective of each action, stepped from the same state with the same key."""
        return jax.vmap(lambda a: self.env.step_env(step_key, state, a, env_params)[4]["objective"])(actions)

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return pick(pparams, jnp.argmin(self.objectives(pparams, state, env_params, step_key)))

