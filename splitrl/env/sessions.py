"""Conversations whose KV cache stays where it ran (docs/environment.md, "Sessions"): what moving a
conversation's cache to a new split costs (`migration`, priced inside `splitrl.env.cost.request_cost`)
and which conversation the next request continues (`next_session`, the env's step). Pure JAX."""

from __future__ import annotations

import jax.numpy as jnp

from splitrl.env.crossing import transfer_time
from splitrl.env.tables import ModelRow
from splitrl.env.types import Conditions, EnvParams, EnvState


def split_point(b, edge_units, unit_is_attn, L: int):
    """Where a placement leaves a conversation's cache: b plus the boundary layer's share of attention units
    on the edge (L for edge-only); FFN chunks keep no cache. The cache lives on the edge below it
    (splitrl/runtime/conversation.py `split_point` is the runtime's same rule)."""
    attn = jnp.asarray(unit_is_attn, jnp.float32)
    share = jnp.sum(edge_units * attn) / jnp.maximum(attn.sum(), 1.0)
    return jnp.minimum(b, L).astype(jnp.float32) + jnp.where(b < L, share, 0.0)


def migration(params: EnvParams, b, fmt, edge_units, model: ModelRow, cond: Conditions) -> dict:
    """Moving a conversation's KV cache to this turn's placement (docs/environment.md, "Sessions"). The
    cache of layer l lives where layer l ran last turn (on the edge for l < cond.kv_split, the boundary
    layer by its share of attention units); layers whose side changes move, by the cheaper of: their KV bytes
    (ctx x kv_bytes per layer) over the link, or the hidden state at the boundary (ctx x the format's
    bytes) over the link and the destination recomputing those layers' KV over the context (the model's
    mean layer per token, prefill). Expected wire times (no retransmission draw). Nothing moves in a new
    conversation (ctx = 0) or while the link is down (the request runs alone: `_finish`)."""
    c, ch, s = params.costs, params.channel, params.session
    L = c.layer_rows.shape[0] - 1
    split = split_point(b, edge_units, c.unit_is_attn, L)
    moved = jnp.abs(split - cond.kv_split)
    to_cloud = split < cond.kv_split
    live = (cond.ctx > 0) & (moved > 0) & (cond.connected > 0.5)
    kv_bytes, hid_bytes = cond.ctx * s.kv_bytes * moved, cond.ctx * c.tx_bytes[fmt]
    wire = lambda n: transfer_time(n, cond.bw, cond.rtt, cond.loss_p, ch.packet_bytes, ch.max_retx)  # noqa: E731
    layer_s = cond.ctx * moved * jnp.where(to_cloud, model.cloud_all[0], model.edge_all[0]) / L
    t_kv, t_re = wire(kv_bytes), wire(hid_bytes) + layer_s
    recompute = live & (t_re < t_kv)
    nbytes = jnp.where(live, jnp.where(recompute, hid_bytes, kv_bytes), 0.0)
    return {"time": jnp.where(live, jnp.minimum(t_kv, t_re), 0.0),
            "up": jnp.where(to_cloud, nbytes, 0.0), "down": jnp.where(to_cloud, 0.0, nbytes),
            "edge_s": jnp.where(recompute & ~to_cloud, layer_s, 0.0),
            "edge_j": jnp.where(recompute & ~to_cloud, cond.ctx * moved * model.edge_all_j[0] / L, 0.0),
            "cloud_s": jnp.where(recompute & to_cloud, layer_s, 0.0),
            "kv_s": jnp.where(live, t_kv, 0.0), "recompute_s": jnp.where(live, t_re, 0.0)}   # each way's price


def next_session(params: EnvParams, state: EnvState, b, edge_units, request, u, has_sessions: bool):
    """(cached context, KV split) of the next request: the next turn of this conversation with probability
    continue_p while it fits the model's context (the cache grows by this turn's prompt and output and
    now lives where this turn ran), else a new conversation (nothing cached)."""
    if not has_sessions:
        return state.ctx_len, state.kv_split
    s, L = params.session, params.costs.layer_rows.shape[0] - 1
    ctx = state.ctx_len + state.prompt_len + state.output_len
    go_on = (u < s.continue_p) & (ctx + request[0] + request[1] <= s.max_ctx)
    split = split_point(b, edge_units, params.costs.unit_is_attn, L)
    return jnp.where(go_on, ctx, 0.0), jnp.where(go_on, split, 0.0)


def params_at(params: EnvParams, state: EnvState) -> EnvParams:
    """`params` with the edge's memory masks for the coming request's whole context (cached + prompt +
    output), from the tabulated contexts (the first at or above it: conservative). Without sessions the
    table has one entry, the scenario's masks, so this returns them unchanged."""
    s = params.session
    tokens = state.ctx_len + state.prompt_len + state.output_len
    m = jnp.minimum(jnp.searchsorted(s.mask_ctx, tokens), s.mask_ctx.shape[0] - 1)
    return params.replace(costs=params.costs.replace(boundary_mask=s.boundary_masks[m], unit_mask=s.unit_masks[m]))
