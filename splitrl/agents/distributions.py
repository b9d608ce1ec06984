"""Masked categorical distributions and the hierarchical factorised action distribution.

The hierarchical action is (boundary b, format f, units u_1..u_U). It factorises as

    π(b, f, u | s) = π_M(b | s) · π_M(f | s) · Π_u π_W(u_u | s, b, f)

where the manager π_M gives two independent masked categoricals and the worker π_W, conditioned on
the manager's (b, f), gives one independent edge/cloud choice per unit of the boundary layer, masked
by `unit_mask[b]` (a unit not allowed on the edge goes to the cloud with probability 1). So

    log π(b, f, u | s) = log π_M(b) + log π_M(f) + Σ_u log π_W(u_u | b, f)

and one PPO ratio trains both levels. The entropy we use is

    H = H[π_M(b)] + H[π_M(f)] + H[π_W(· | s, b, f)]   at the *sampled* b, f,

a one-sample estimate of the joint entropy H[π(b, f, u)] = H_M + E_{b,f}[H_W(b, f)]: exact in
expectation over the manager's choice, and it needs only the worker pass PPO already makes.

Masking: an infeasible choice gets logit MASKED_LOGIT (a large finite negative number, never -inf),
so its probability underflows to exactly 0 while log-probs and entropies stay finite (0 · finite = 0).
All functions here take one unbatched observation; callers `vmap`.
"""

from __future__ import annotations

import chex
import distrax
import jax
import jax.numpy as jnp
from flax import struct

MASKED_LOGIT = -1e9


def mask_logits(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Logits with masked-out entries set to MASKED_LOGIT. If every entry is masked (the environment
    promises at least one allowed), the logits are returned unmasked rather than producing NaN."""
    chex.assert_equal_shape([logits, mask])
    any_allowed = jnp.any(mask, axis=-1, keepdims=True)
    return jnp.where(mask | ~any_allowed, logits, MASKED_LOGIT)


def masked_categorical(logits: jax.Array, mask: jax.Array) -> distrax.Categorical:
    return distrax.Categorical(logits=mask_logits(logits, mask))


def unit_logits_two_way(edge_logits: jax.Array, edge_allowed: jax.Array) -> jax.Array:
    """Per-unit [cloud, edge] logits f32[U, 2] from edge-vs-cloud logits f32[U]; the cloud is always
    allowed, the edge only where `edge_allowed`."""
    chex.assert_rank([edge_logits, edge_allowed], 1)
    edge = jnp.where(edge_allowed, edge_logits, MASKED_LOGIT)
    return jnp.stack([jnp.zeros_like(edge), edge], axis=-1)


class HierarchicalLogits(struct.PyTreeNode):
    """Masked logits of one hierarchical decision: the manager's two heads and the worker's per-unit
    two-way logits *for the chosen (b, f)*."""
    boundary: jax.Array   # f32[B], masked
    fmt: jax.Array        # f32[F], masked
    units: jax.Array      # f32[U, 2] (cloud, edge), masked by unit_mask[b]


class HierarchicalAction(struct.PyTreeNode):
    """Same fields as `splitrl.env.Action`: boundary i32[], fmt i32[], units i32[U] (1 = edge)."""
    boundary: jax.Array
    fmt: jax.Array
    units: jax.Array


def manager_distributions(boundary_logits, fmt_logits, boundary_mask, format_mask):
    return (masked_categorical(boundary_logits, boundary_mask),
            masked_categorical(fmt_logits, format_mask))


def worker_distribution(unit_logits: jax.Array) -> distrax.Categorical:
    """Independent per-unit two-way categoricals over [cloud, edge]: batch shape [U]."""
    chex.assert_rank(unit_logits, 2)
    return distrax.Categorical(logits=unit_logits)


def log_prob(logits: HierarchicalLogits, action: HierarchicalAction) -> jax.Array:
    """Joint log-probability: manager's two terms plus the sum over units."""
    return (distrax.Categorical(logits=logits.boundary).log_prob(action.boundary)
            + distrax.Categorical(logits=logits.fmt).log_prob(action.fmt)
            + jnp.sum(worker_distribution(logits.units).log_prob(action.units)))


def entropy(logits: HierarchicalLogits) -> jax.Array:
    """Manager entropy plus the worker's entropy at the (b, f) these logits were computed for."""
    return (distrax.Categorical(logits=logits.boundary).entropy()
            + distrax.Categorical(logits=logits.fmt).entropy()
            + jnp.sum(worker_distribution(logits.units).entropy()))
