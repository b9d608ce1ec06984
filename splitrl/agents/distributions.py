"""Masked categorical distributions and the hierarchical factorised action distribution.

The hierarchical action is (boundary b, format f, split g, units u_1..u_U). It factorises as

    π(b, f, g, u | s) = π_M(b | s) · π_M(f | s) · π_W(g | s, b, f) · [Π_u π_W(u_u | s, b, f)]^g

where the manager π_M gives two independent masked categoricals and the worker π_W, conditioned on
the manager's (b, f), first decides whether to split the boundary layer at all (g = 1) and, if so,
places each of its units on the edge or the cloud, masked by `unit_mask[b]` (a unit not allowed on
the edge goes to the cloud with probability 1; g = 1 is masked when no unit may go to the edge).
With g = 0 every unit goes to the cloud: layers < b on the edge, the rest on the cloud.

Why the gate: the cost of a partial layer is an AND — the boundary activations cross the link as soon
as *any* unit of layer b runs on the edge — so with independent per-unit choices no single unit's
flip shows the gain of "all on the cloud", and PPO settled on 3 of 7 units of layer 0 on the edge
(objective 0.86 against cloud-only's 0.20). The gate makes "whole layers" one decision. So

    log π = log π_M(b) + log π_M(f) + log π_W(g) + g · Σ_u log π_W(u_u | b, f)

and one PPO ratio trains both levels. The entropy we use is

    H = H[π_M(b)] + H[π_M(f)] + H[π_W(g)] + P(g = 1) · H[π_W(u | s, b, f)]   at the *sampled* b, f,

a one-sample estimate of the joint entropy: exact in expectation over the manager's choice, and it
needs only the worker pass PPO already makes.

Masking: an infeasible choice gets logit MASKED_LOGIT (a large finite negative number, never -inf),
so its probability underflows to exactly 0 while log-probs and entropies stay finite (0 · finite = 0).
All functions here take one unbatched observation; callers `vmap`.
"""

from __future__ import annotations

import functools
import math

import chex
import distrax
import jax
import jax.numpy as jnp
from flax import struct

from splitrl.env import draws

MASKED_LOGIT = -1e9


def argmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """`jnp.argmax` of finite values (the first index of the maximum) as a max, a compare and a min:
    XLA's CPU backend runs argmax as a variadic (value, index) reduction, which the profiler put above the
    policy's MLPs in the HPPO rollout (docs/benchmarks.md). Same index, ties included."""
    n = x.shape[axis]
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, axis % x.ndim)
    return jnp.min(jnp.where(x == jnp.max(x, axis=axis, keepdims=True), iota, n), axis=axis)


def gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """`jax.random.gumbel(key, shape)` (float32), bit for bit, with the hash's rounds written out
    (splitrl/env/draws.py: jax's CPU threefry is a rolled loop that stores the batch's counters each round)."""
    u = draws.uniforms(key, math.prod(shape), float(jnp.finfo(jnp.float32).tiny), 1.0)
    return -jnp.log(-jnp.log(u)).reshape(shape)


def categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """`jax.random.categorical(key, logits)` over the last axis of float32 logits: the same Gumbel noise and
    so the same draws, through the faster `gumbel` and `argmax`."""
    return argmax(gumbel(key, logits.shape) + logits)


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
    split: jax.Array      # f32[2] (whole layers, split layer b), split masked when no unit of b may go to the edge
    units: jax.Array      # f32[U, 2] (cloud, edge), masked by unit_mask[b]


class HierarchicalAction(struct.PyTreeNode):
    """The fields of `splitrl.env.Action` (boundary i32[], fmt i32[], units i32[U], 1 = edge; all
    zero when split = 0) and the worker's split gate i32[], which the env ignores."""
    boundary: jax.Array
    fmt: jax.Array
    split: jax.Array
    units: jax.Array


def split_logits(gate_logit: jax.Array, edge_allowed: jax.Array) -> jax.Array:
    """[whole, split] logits f32[2] from one gate logit; splitting needs a unit allowed on the edge."""
    return jnp.stack([jnp.zeros_like(gate_logit), jnp.where(jnp.any(edge_allowed), gate_logit, MASKED_LOGIT)])


def short_log_softmax(logits: jax.Array) -> list[jax.Array]:
    """`jax.nn.log_softmax(logits)` over a short last axis (2 or 3 categories), as its columns, computed apart:
    XLA:CPU runs a reduction over a minor axis that short (and its gradient) as a slow loop, ~15 % of the
    PPO epochs for the units alone (docs/benchmarks.md). The same formula; its float rounding may differ."""
    columns = [logits[..., i] for i in range(logits.shape[-1])]
    shift = jax.lax.stop_gradient(functools.reduce(jnp.maximum, columns))
    columns = [c - shift for c in columns]
    log_sum = jnp.log(functools.reduce(jnp.add, [jnp.exp(c) for c in columns]))
    return [c - log_sum for c in columns]


def short_log_prob(logits: jax.Array, value: jax.Array) -> jax.Array:
    """`distrax.Categorical(logits).log_prob(value)` over a short last axis (value in range)."""
    log_probs = short_log_softmax(logits)
    return functools.reduce(lambda picked, i: jnp.where(value == i, log_probs[i], picked),
                            range(1, len(log_probs)), log_probs[0])


def short_entropy(logits: jax.Array) -> jax.Array:
    """`distrax.Categorical(logits).entropy()` over a short last axis; a probability of 0 adds 0 (and no gradient)."""
    def p_log_p(log_p):
        p = jnp.exp(log_p)
        return jnp.where(p == 0, 0.0, log_p) * p
    return -functools.reduce(jnp.add, [p_log_p(log_p) for log_p in short_log_softmax(logits)])


def log_prob(logits: HierarchicalLogits, action: HierarchicalAction) -> jax.Array:
    """Joint log-probability: manager's two terms, the split gate, and the units when split."""
    return (distrax.Categorical(logits=logits.boundary).log_prob(action.boundary)
            + short_log_prob(logits.fmt, action.fmt)
            + short_log_prob(logits.split, action.split)
            + action.split * jnp.sum(short_log_prob(logits.units, action.units)))


def entropy(logits: HierarchicalLogits) -> jax.Array:
    """Manager entropy plus the worker's (gate, and units weighted by P(split)) at the (b, f) these
    logits were computed for."""
    p_split = jnp.exp(short_log_softmax(logits.split)[1])
    return (distrax.Categorical(logits=logits.boundary).entropy()
            + short_entropy(logits.fmt)
            + short_entropy(logits.split) + p_split * jnp.sum(short_entropy(logits.units)))
