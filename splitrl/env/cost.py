"""What one request costs under a partition: latency, edge energy, bytes, ΔPPL. Pure JAX.

The boundary layer b (edge runs layers < b fully) is split unit by unit. Its two sublayers
(attention, FFN) each run their edge and cloud units in parallel; partial sums merge on the cloud.
The hidden state lives on one side (the holder): it starts on the edge; a sublayer with cloud units
first sends it up (one crossing), and a sublayer with both sides' units also sends the edge's
partial sum up (a second crossing); if the cloud holds it and the FFN has edge units, it is sent down.
After layer b the cloud runs the rest. Every crossing costs RTT/2 + bytes/bandwidth plus expected
selective-repeat retransmissions. Decode repeats the pipeline per generated token and returns each
token to the edge (it embeds the next one); cloud-only streams tokens with no per-token round trip.

Cost of a step is independent of depth: one row of `layer_rows` per boundary holds everything
(prefix/suffix sums were taken on the host, splitrl/env/tables.py decodes the row), and both phases
share one vmapped pass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from splitrl.env.tables import LayerRow, ModelRow, decode_layer_row, decode_model_row
from splitrl.env.types import Conditions, EnvParams
from splitrl.profiles.formats import TOKEN_ID_BYTES

R_MAX = 4            # static bound on retransmission rounds (params.channel.max_retx <= R_MAX)


def lerp_index(grid: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index and weight to interpolate linearly on `grid` at `x` (flat beyond both ends)."""
    # a compare-and-count fuses into one kernel; jnp.searchsorted lowers to a while loop
    i = jnp.clip(jnp.sum(grid < x) - 1, 0, grid.shape[0] - 2)
    w = jnp.clip((x - grid[i]) / (grid[i + 1] - grid[i]), 0.0, 1.0)
    return i, w


def at(a: jax.Array, iw: tuple[jax.Array, jax.Array]) -> jax.Array:
    """a[..., x] interpolated along the last axis."""
    i, w = iw
    return a[..., i] * (1 - w) + a[..., i + 1] * w


def transfer_time(nbytes, bw, rtt, loss_p, packet_bytes, max_retx):
    """Expected one-way time of `nbytes` (any shape) with selective-repeat ARQ; 0 when nothing is sent.

    Round r (r = 1..max_retx) is needed when any packet was lost in all r earlier sends, and costs a
    retransmission timeout (one RTT) plus resending the lost share.
    """
    nbytes = jnp.asarray(nbytes)[..., None]
    n_pk = jnp.maximum(jnp.ceil(nbytes / packet_bytes), 1.0)
    r = jnp.arange(1, R_MAX + 1, dtype=jnp.float32)
    lost_r = loss_p ** r
    needed = 1.0 - (1.0 - lost_r) ** n_pk
    rounds = jnp.where(r <= max_retx, needed * (rtt + lost_r * nbytes / bw), 0.0).sum(-1)
    return jnp.where(nbytes[..., 0] > 0, rtt / 2 + nbytes[..., 0] / bw + rounds, 0.0)


class Phase(NamedTuple):
    """Everything one pipeline pass (prefill, or one decode step) reads; a leading phase axis when batched."""
    row: LayerRow        # the boundary row at this phase's context
    model: ModelRow      # embedding and head totals at this phase's context
    head: ModelRow       # ... at the decode context: the head runs once per generated token
    n_tok: jax.Array     # tokens through the pass
    crossing: jax.Array  # seconds of one hidden-state crossing of this pass


def _pass(p: Phase, on_e, is_attn, last, slow):
    """One pipeline pass through a split boundary layer. Returns (seconds, edge compute seconds,
    edge joules, crossings up, crossings down)."""
    row, X, n_tok = p.row, p.crossing, p.n_tok
    te, tc, tej = row.edge, slow * row.cloud, row.edge_j
    ne, nc, nej = row.norm_edge, slow * row.norm_cloud, row.norm_edge_j
    head_e, head_e_j, head_c = p.head.edge_head, p.head.edge_head_j, p.head.cloud_head
    on_c = 1.0 - on_e
    attn, ffn = is_attn.astype(jnp.float32), 1.0 - is_attn.astype(jnp.float32)
    # sums of products, not dots: XLA fuses them with their neighbours (dots are separate kernels)
    a_e, a_c = jnp.max(on_e * attn) > 0, jnp.max(on_c * attn) > 0
    f_e, f_c = jnp.max(on_e * ffn) > 0, jnp.max(on_c * ffn) > 0
    te_attn = n_tok * (jnp.sum(on_e * attn * te) + a_e * ne[0])
    tc_attn = n_tok * (jnp.sum(on_c * attn * tc) + a_c * nc[0])
    te_ffn = n_tok * (jnp.sum(on_e * ffn * te) + f_e * ne[1])
    tc_ffn = n_tok * (jnp.sum(on_c * ffn * tc) + f_c * nc[1])
    t_attn = jnp.where(~a_c, te_attn, jnp.where(~a_e, X + tc_attn, jnp.maximum(te_attn, X + tc_attn) + X))
    ffn_edge_holds = jnp.where(~f_c, te_ffn, jnp.where(~f_e, X + tc_ffn, jnp.maximum(te_ffn, X + tc_ffn) + X))
    ffn_cloud_holds = jnp.where(~f_e, tc_ffn, jnp.where(~f_c, X + te_ffn, jnp.maximum(tc_ffn, X + te_ffn + X)))
    t_ffn = jnp.where(a_c, ffn_cloud_holds, ffn_edge_holds)
    ends_on_edge = ~f_c
    head_on_edge = ends_on_edge & last
    after = (jnp.where(ends_on_edge & ~last, X, 0.0) + slow * n_tok * row.suffix
             + jnp.where(head_on_edge, head_e, slow * head_c))
    base = n_tok * (p.model.edge_embed + row.prefix)
    time = base + t_attn + t_ffn + after
    edge_s = base + te_attn + te_ffn + jnp.where(head_on_edge, head_e, 0.0)
    edge_j = (n_tok * (p.model.edge_embed_j + row.prefix_j + jnp.sum(on_e * tej) + a_e * nej[0] + f_e * nej[1])
              + jnp.where(head_on_edge, head_e_j, 0.0))
    n_up = (a_c * 1.0 + (a_e & a_c) + jnp.where(a_c, f_e & f_c, f_c * 1.0 + (f_e & f_c)) + (ends_on_edge & ~last))
    n_down = (a_c & f_e) * 1.0
    return time, edge_s, edge_j, n_up, n_down


def request_cost(params: EnvParams, boundary, fmt, edge_units, prompt, output, cond: Conditions) -> dict:
    """Metrics of one request (prompt + output tokens) under the partition, in this slot's conditions.

    edge_units: f32[U] in {0, 1}, already masked (`project_action`). The cloud's compute slows by
    1 / (1 - cond.cloud_load). Returns a dict of f32 scalars.
    """
    c, ch = params.costs, params.channel
    L = c.layer_rows.shape[0] - 1
    b = boundary
    slow = 1.0 / (1.0 - cond.cloud_load)
    cloud_only = (b == 0) & ~jnp.any(edge_units > 0)
    edge_only = (b >= L) | ((b == L - 1) & jnp.all(edge_units > 0))

    # one gather per step: the boundary's rows for both phases, interpolated at each phase's context
    i_pre, w_pre = lerp_index(c.ctx_grid, prompt)
    i_dec, w_dec = lerp_index(c.ctx_grid, prompt + output / 2)  # decode is linear in context: the midpoint is exact
    idx, wts = jnp.stack([i_pre, i_dec]), jnp.stack([w_pre, w_dec])
    phase = jnp.arange(2)
    near = c.layer_rows[jnp.minimum(b, L), jnp.stack([idx, idx + 1]), jnp.stack([phase, phase])]  # [2 neighbours, 2 phases, K]
    rows = near[0] * (1 - wts[:, None]) + near[1] * wts[:, None]
    tot = (jnp.take_along_axis(c.model_rows, idx[:, None, None], -1)[..., 0] * (1 - wts[:, None])
           + jnp.take_along_axis(c.model_rows, idx[:, None, None] + 1, -1)[..., 0] * wts[:, None])  # [2, M]
    model, head = decode_model_row(tot), decode_model_row(tot[1])

    residual = cond.loss_p ** (ch.max_retx + 1.0)   # loss left after the retransmission rounds

    # every crossing's expected time in one vectorised call
    hidden = c.tx_bytes[fmt]
    sizes = jnp.stack([prompt * hidden, hidden, TOKEN_ID_BYTES, prompt * TOKEN_ID_BYTES])
    X = transfer_time(sizes, cond.bw, cond.rtt, cond.loss_p, ch.packet_bytes, ch.max_retx)
    n_tok = jnp.stack([prompt, 1.0])
    phases = Phase(row=decode_layer_row(rows, edge_units.shape[0]), model=model, head=head, n_tok=n_tok, crossing=X[:2])
    t, es, ej, n_up, n_down = jax.vmap(_pass, in_axes=(Phase(0, 0, None, 0, 0), None, None, None, None))(
        phases, edge_units, c.unit_is_attn, jnp.minimum(b, L - 1) == L - 1, slow)
    tok_back = X[2]
    split_t = t[0] + tok_back + output * (t[1] + tok_back)
    split_es, split_ej = es[0] + output * es[1], ej[0] + output * ej[1]
    split_up = n_up[0] * sizes[0] + output * n_up[1] * hidden
    split_down = n_down[0] * sizes[0] + output * n_down[1] * hidden + (output + 1) * TOKEN_ID_BYTES

    # cloud-only: the prompt's token ids go up once, tokens stream back; edge-only: nothing crosses
    c_pass = slow * (n_tok * (model.cloud_embed + model.cloud_all) + head.cloud_head)
    cloud_t = X[3] + c_pass[0] + output * c_pass[1] + cond.rtt / 2
    e_pass = n_tok * (model.edge_embed + model.edge_all) + head.edge_head
    e_pass_j = n_tok * (model.edge_embed_j + model.edge_all_j) + head.edge_head_j
    edge_t, edge_j = e_pass[0] + output * e_pass[1], e_pass_j[0] + output * e_pass_j[1]

    pick = lambda e, cl, s: jnp.where(edge_only, e, jnp.where(cloud_only, cl, s))  # noqa: E731
    m = {"latency": pick(edge_t, cloud_t, split_t), "edge_s": pick(edge_t, 0.0, split_es),
         "compute_j": pick(edge_j, 0.0, split_ej), "up": pick(0.0, prompt * TOKEN_ID_BYTES, split_up),
         "down": pick(0.0, output * TOKEN_ID_BYTES, split_down),
         "dppl": jnp.where(edge_only | cloud_only, 0.0, delta_ppl(params, b, fmt, edge_units, residual, cond.snr_db))}
    return _fallback(params, m, edge_only, edge_t, edge_j, cond) | {"residual_loss": residual}


def delta_ppl(params: EnvParams, b, fmt, edge_units, residual_loss, snr_db):
    """ΔPPL between the rows of boundary b (nothing of layer b on the edge) and b + 1 (all of it), by the
    share of the layer's units on the edge; plus residual packet loss and channel noise."""
    c, ch, pp = params.costs, params.channel, params.ppl
    L = c.layer_rows.shape[0] - 1
    frac = jnp.mean(edge_units)
    prow = pp.rows[jnp.stack([jnp.minimum(b, L), jnp.minimum(b + 1, L)])]     # one gather: rows b and b + 1
    prow = prow[0] * (1 - frac) + prow[1] * frac
    F, NL = c.tx_bytes.shape[0], pp.loss_grid.shape[0]
    return (prow[fmt] + at(prow[F:F + NL], lerp_index(pp.loss_grid, residual_loss))
            + ch.noise_on * at(prow[F + NL:], lerp_index(pp.snr_grid, snr_db)))


def _fallback(params: EnvParams, m: dict, edge_only, edge_t, edge_j, cond: Conditions) -> dict:
    """Partition checkpoints: past the timeout the edge finishes the request alone, if it can."""
    c, ch = params.costs, params.channel
    L = c.layer_rows.shape[0] - 1
    latency = m["latency"]
    timed_out = (latency > ch.timeout_s) & ~edge_only
    can_fallback = c.boundary_mask[L]
    failed = timed_out & ~can_fallback
    fb = lambda v, edge_v: jnp.where(timed_out, jnp.where(can_fallback, edge_v, 0.0), v)  # noqa: E731
    latency = jnp.where(timed_out, ch.timeout_s, 0.0) + fb(latency, edge_t)
    edge_s, compute_j = fb(m["edge_s"], edge_t), fb(m["compute_j"], edge_j)
    dppl = jnp.where(timed_out, 0.0, m["dppl"])
    up = jnp.where(timed_out, jnp.minimum(m["up"], cond.bw * ch.timeout_s), m["up"])
    tx_s = up / cond.bw
    energy = compute_j + c.power_radio_w * tx_s + c.power_idle_w * jnp.maximum(latency - edge_s - tx_s, 0.0)
    return {"latency": latency, "energy": energy, "delta_ppl": dppl, "bytes_up": up, "bytes_down": m["down"],
            "edge_compute_s": edge_s, "timed_out": timed_out.astype(jnp.float32),
            "failed": failed.astype(jnp.float32)}


def project_action(params: EnvParams, boundary, fmt, units):
    """Map any action onto the feasible set (masks are the contract; this is the safety net):
    the boundary drops to the largest allowed one <= it, and units not allowed on the edge go to the cloud."""
    c = params.costs
    L1 = c.boundary_mask.shape[0]
    idx = jnp.arange(L1)
    b = jnp.clip(boundary, 0, L1 - 1)
    allowed = c.boundary_mask & (idx <= b)
    b = jnp.where(allowed.any(), jnp.max(jnp.where(allowed, idx, -1)), jnp.argmax(c.boundary_mask))
    edge_units = jnp.where(c.unit_mask[b], units > 0, False).astype(jnp.float32)
    return b.astype(jnp.int32), jnp.clip(fmt, 0, c.tx_bytes.shape[0] - 1).astype(jnp.int32), edge_units


def action_cost(params: EnvParams, boundary, fmt, units, prompt, output, cond: Conditions) -> dict:
    """`request_cost` of a (projected) action: the entry point for baselines and the oracle."""
    b, f, eu = project_action(params, boundary, fmt, units)
    return request_cost(params, b, f, eu, prompt, output, cond)
