"""DPP-guided PPO: the hierarchical policy learns from the myopic drift-plus-penalty controller, then
past it.

Each update labels `guide_states` of the states the policy just visited with the action the one-slot
DPP controller takes there (splitrl/env/dpp.py: the least one-slot objective at the observed estimates,
over every whole-layer split and format; the labels are computed inside the same jit) and adds

    β_t · E[−log π(a_DPP | s)],    β_t = guide_coef → guide_final linearly over the first `guide_anneal` of the run

to the PPO loss (a behaviour-cloning term on on-policy states, as in DAgger: Ross et al., AISTATS 2011).
Early on the policy reproduces the controller the reward is built on, which a sparse-success action
space otherwise hides (a random split costs ~18x cloud-only: PPO collapses onto the one safe action
before it finds the conditional splits DPP takes). As β shrinks, the PPO term takes over and the
policy keeps DPP's decisions only where the long-run return agrees: it may look ahead where the
one-slot controller cannot (a link that is likely to stay down, a queue about to saturate).

What runs at decision time is the policy network alone: the ONNX export and the edge runtime need
no cost model.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from splitrl.agents import shuffle
from splitrl.agents.distributions import HierarchicalAction
from splitrl.env.cost import project_action
from splitrl.env.dpp import candidate_actions, fleet_myopic_action, myopic_action


class GuideBatch(struct.PyTreeNode):
    obs: Any                   # [G] observations of labelled states
    action: HierarchicalAction  # [G] the DPP controller's (projected) actions there


def make_labeller(cfg, env, env_params, n_states: int | None = None):
    """`label(env_params, obs[N], states[N], key) -> GuideBatch` over `n_states` (default `cfg.guide_states`)
    of the N states, drawn without replacement (all of them when N is smaller).
    On a fleet (`env.n_devices`) the states are fleet states [M] and obs per device [M·N]: each device's
    state is labelled with its own myopic DPP action, on its own params (`params.device[i]`), at the
    published cloud state it observed; with `cfg.guide_congestion` = κ > 0, with congestion DPP's action
    (the same, plus κ times the drift its offloaded work adds to the shared queue: docs/fleet.md)."""
    n_states = cfg.guide_states if n_states is None else n_states
    if hasattr(env, "n_devices"):
        return _fleet_labeller(cfg, env, env_params, n_states)
    if cfg.guide_congestion:
        raise ValueError(f"agent.guide_congestion = {cfg.guide_congestion}: congestion DPP labels a fleet's devices "
                         "(it prices the shared cloud queue); a single device has none: set it to 0")
    # whole-layer splits and formats: (L+1)·3 candidates, cheap enough to label inside every update; the
    # partial layers the DPP baseline also scans are left for PPO to find
    candidates = candidate_actions(env, env_params, layer_only=True)

    def label(params_env, obs, states, key) -> GuideBatch:
        n = jax.tree.leaves(states)[0].shape[0]
        idx = shuffle.choice_without_replacement(key, n, min(n_states, n))
        pick = lambda x: x[idx]  # noqa: E731
        obs, states = jax.tree.map(pick, obs), jax.tree.map(pick, states)
        return GuideBatch(obs=obs, action=jax.vmap(lambda s: dpp_label(params_env, s, candidates))(states))

    return label


def dpp_label(params_env, state, candidates, decide=myopic_action) -> HierarchicalAction:
    """The DPP action (`decide`: myopic by default) in `state`, projected onto a feasible placement, as a
    hierarchical action."""
    a = decide(params_env, state, candidates)
    b, fmt, units = project_action(params_env, a.boundary, a.fmt, a.units)
    units = units.astype(jnp.int32)
    return HierarchicalAction(boundary=b, fmt=fmt, split=jnp.any(units > 0).astype(jnp.int32), units=units)


def _fleet_labeller(cfg, env, env_params, n_states: int):
    # layer-only candidates depend only on the env's static structure, so one set serves every device
    first = jax.tree.map(lambda x: x[0], env_params.device)
    candidates = candidate_actions(env.device, first, layer_only=True)
    n_dev = env.n_devices
    decide = myopic_action
    if cfg.guide_congestion:
        c = env_params.cloud      # concrete: the fleet's replicas and references are static per fleet file
        decide = partial(fleet_myopic_action, replicas=float(c.replicas), wait_ref_s=float(c.wait_ref_s),
                         batch_gain=float(c.batch_gain), congestion=cfg.guide_congestion)

    def label(params_env, obs, states, key) -> GuideBatch:
        # device states [M, N] -> [M·N], in the order of obs ([T, E, N] merged): device = index mod N
        dev_states = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), states.device)
        n = jax.tree.leaves(dev_states)[0].shape[0]
        idx = shuffle.choice_without_replacement(key, n, min(n_states, n))
        pick = lambda x: x[idx]  # noqa: E731
        obs, dev_states = jax.tree.map(pick, obs), jax.tree.map(pick, dev_states)
        dev_params = jax.tree.map(lambda x: x[idx % n_dev], params_env.device)
        actions = jax.vmap(lambda p, s: dpp_label(p, s, candidates, decide))(dev_params, dev_states)
        return GuideBatch(obs=obs, action=actions)

    return label


def guide_loss(policy, params, batch: GuideBatch) -> tuple[jax.Array, jax.Array]:
    """(mean −log π(a_DPP | s), share of labelled states whose greedy boundary is DPP's)."""
    log_prob, _, _ = jax.vmap(policy.evaluate, (None, 0, 0))(params, batch.obs, batch.action)
    greedy = jax.vmap(policy.greedy, (None, 0))(params, batch.obs)
    return -log_prob.mean(), jnp.mean((greedy.boundary == batch.action.boundary).astype(jnp.float32))


def label_while_active(label, beta, *args) -> GuideBatch:
    """`label(*args)` while the guide's weight β is positive, zeros once it is 0 (by default from `guide_anneal`
    of the run on): a `lax.cond` skips the labelling then. Under `vmap` over β the cond runs both branches."""
    def skip(*args):
        return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), jax.eval_shape(label, *args))
    return jax.lax.cond(beta > 0, label, skip, *args)


def coefficient(cfg, update_step) -> jax.Array:
    """β_t: guide_coef at the first update, guide_final from `guide_anneal` of the updates on."""
    frac = jnp.minimum(update_step / jnp.maximum(cfg.guide_anneal * (cfg.num_updates - 1), 1), 1.0)
    return cfg.guide_coef + (cfg.guide_final - cfg.guide_coef) * frac
