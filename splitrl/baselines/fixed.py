"""Fixed and offline policies: everything on one side, a uniformly random placement, and one layer
split chosen offline (Neurosurgeon-style)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from splitrl.baselines.base import PolicyBase
from splitrl.env.dpp import candidate_actions, candidate_costs_jit, penalty, pick
from splitrl.env.nominal import nominal
from splitrl.env.types import Action


@dataclasses.dataclass(frozen=True)
class CloudOnly(PolicyBase):
    """Everything on the cloud: the prompt's token ids go up, tokens stream back."""
    name: str = "cloud_only"

    def init(self, env, env_params, spec=None, key=None):
        return {"units": jnp.zeros(env.n_units, jnp.int32)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return Action(boundary=jnp.int32(0), fmt=jnp.int32(0), units=pparams["units"])


@dataclasses.dataclass(frozen=True)
class EdgeOnly(PolicyBase):
    """Everything on the edge (b = L). Where the model does not fit the edge, the env's projection
    keeps as much as fits: the deepest allowed boundary with its allowed units on the edge
    (the table marks such rows `edge_fits = False`)."""
    name: str = "edge_only"

    def init(self, env, env_params, spec=None, key=None):
        return {"units": jnp.ones(env.n_units, jnp.int32), "b": jnp.int32(env.n_layers)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return Action(boundary=pparams["b"], fmt=jnp.int32(0), units=pparams["units"])


@dataclasses.dataclass(frozen=True)
class RandomPolicy(PolicyBase):
    """Uniform over allowed boundaries and formats, each allowed unit on the edge with probability 1/2."""
    name: str = "random"

    def init(self, env, env_params, spec=None, key=None):
        return {}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        kb, kf, ku = jax.random.split(key, 3)
        b = jax.random.categorical(kb, jnp.where(obs.boundary_mask, 0.0, -jnp.inf)).astype(jnp.int32)
        fmt = jax.random.randint(kf, (), 0, obs.format_mask.shape[0]).astype(jnp.int32)
        units = (jax.random.bernoulli(ku, 0.5, obs.unit_mask[b].shape) & obs.unit_mask[b]).astype(jnp.int32)
        return Action(boundary=b, fmt=fmt, units=units)


@dataclasses.dataclass(frozen=True)
class StaticSplit(PolicyBase):
    """Neurosurgeon-style: one layer split (and transmission format), chosen offline at the scenario's
    nominal conditions (mean bandwidth, mean request, mean RTT, loss and cloud load) to minimise the
    scenario's own penalty V·(w_lat·lat + w_en·E + w_acc·ΔPPL) (normalised); never changes."""
    name: str = "static_split"

    def init(self, env, env_params, spec=None, key=None):
        cands = candidate_actions(env, env_params, layer_only=True)
        prompt, output, cond = nominal(env.channel_kind, env_params)
        m = candidate_costs_jit(env_params, cands, prompt, output, cond)
        return pick(cands, int(jnp.argmin(penalty(env_params, m))))

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return pparams

