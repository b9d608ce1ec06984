"""What one request costs under a partition: latency, edge energy, bytes, ΔPPL, and whether it timed
out, fell back to the edge or failed. Pure JAX.

The boundary layer b (edge runs layers < b fully) is split unit by unit. Its two sublayers
(attention, FFN) each run their edge and cloud units in parallel; partial sums merge on the cloud.
The hidden state lives on one side (the holder): it starts on the edge; a sublayer with cloud units
first sends it up (one crossing), and a sublayer with both sides' units also sends the edge's
partial sum up (a second crossing); if the cloud holds it and the FFN has edge units, it is sent down.
After layer b the cloud runs the rest. Every crossing costs RTT/2 + bytes/bandwidth plus expected
selective-repeat retransmissions (drawn per crossing in the env's step, their expectation in a
controller's one-slot model). Decode repeats the pipeline per generated token and returns each
token to the edge (it embeds the next one); cloud-only streams tokens with no per-token round trip.

A request that uses the cloud first waits for a batch slot (splitrl/env/cloud.py), and the cloud's
decode steps are shared with its background batch. When the link is down the edge notices after
`detect_s` and runs the request alone, if the model fits it. A request that overruns `timeout_s`
resumes on the edge from its last generated token (the runtime's partition checkpoint): the edge
recomputes the KV cache of the layers it did not hold, then decodes the rest; a request the edge
cannot finish alone fails at the timeout.

Cost of a step is independent of depth: one row of `layer_rows` per boundary holds everything
(prefix/suffix sums were taken on the host, splitrl/env/tables.py decodes the row), and both phases
share one vmapped pass.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from splitrl.env import sessions
from splitrl.env.battery import edge_available
from splitrl.env.cloud import decode_factor
from splitrl.env.crossing import _rounds, crossings, loss_powers, transfer_time
from splitrl.env.fuse import last_axis_max, last_axis_sum, materialise
from splitrl.env.interp import at, lerp_index
from splitrl.env.tables import LayerRow, ModelRow, compute_time_masks, decode_layer_row, decode_model_row
from splitrl.env.types import Conditions, EnvParams
from splitrl.profiles.formats import TOKEN_ID_BYTES


# ----------------------------------------------------------------------------- one pipeline pass
class Phase(NamedTuple):
    """Everything one pipeline pass (prefill, or one decode step) reads; a leading phase axis when batched."""
    row: LayerRow        # the boundary row at this phase's context
    model: ModelRow      # embedding and head totals at this phase's context
    head: ModelRow       # ... at the decode context: the head runs once per generated token
    n_tok: jax.Array     # tokens through the pass
    crossing: jax.Array  # seconds of one hidden-state crossing of this pass
    cloud: jax.Array     # the cloud's time factor in this phase (its batch slows decode steps)
    mix: jax.Array       # [edge, cloud]: a split sublayer's units over their share of the whole layer


def _pass(p: Phase, on_e, is_attn, last):
    """One pipeline pass through a split boundary layer. Returns (seconds, edge compute seconds,
    edge joules, crossings up, crossings down, cloud compute seconds)."""
    row, X, n_tok, slow = p.row, p.crossing, p.n_tok, p.cloud
    te, tc, tej = row.edge, slow * row.cloud, row.edge_j
    ne, nc, nej = row.norm_edge, slow * row.norm_cloud, row.norm_edge_j
    head_e, head_e_j, head_c = p.head.edge_head, p.head.edge_head_j, p.head.cloud_head
    on_c = 1.0 - on_e
    attn, ffn = is_attn.astype(jnp.float32), 1.0 - is_attn.astype(jnp.float32)
    # sums of products as chains of adds, not dots or reductions: XLA fuses them with their neighbours
    a_e, a_c = last_axis_max(on_e * attn) > 0, last_axis_max(on_c * attn) > 0
    f_e, f_c = last_axis_max(on_e * ffn) > 0, last_axis_max(on_c * ffn) > 0
    # a sublayer split over both sides runs its units as separate pieces: they cost `mix` x their share
    m_attn = jnp.where(a_e & a_c, p.mix, 1.0)
    m_ffn = jnp.where(f_e & f_c, p.mix, 1.0)
    te_attn = n_tok * (m_attn[0] * last_axis_sum(on_e * attn * te) + a_e * ne[0])
    tc_attn = n_tok * (m_attn[1] * last_axis_sum(on_c * attn * tc) + a_c * nc[0])
    te_ffn = n_tok * (m_ffn[0] * last_axis_sum(on_e * ffn * te) + f_e * ne[1])
    tc_ffn = n_tok * (m_ffn[1] * last_axis_sum(on_c * ffn * tc) + f_c * nc[1])
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
    edge_j = (n_tok * (p.model.edge_embed_j + row.prefix_j + m_attn[0] * last_axis_sum(on_e * attn * tej)
                       + m_ffn[0] * last_axis_sum(on_e * ffn * tej) + a_e * nej[0] + f_e * nej[1])
              + jnp.where(head_on_edge, head_e_j, 0.0))
    n_up = (a_c * 1.0 + (a_e & a_c) + jnp.where(a_c, f_e & f_c, f_c * 1.0 + (f_e & f_c)) + (ends_on_edge & ~last))
    n_down = (a_c & f_e) * 1.0
    cloud_s = tc_attn + tc_ffn + slow * n_tok * row.suffix + jnp.where(head_on_edge, 0.0, slow * head_c)
    return time, edge_s, edge_j, n_up, n_down, cloud_s


def pipelined(serial, edge_s, n_cross, crossing, rtt, prompt, chunk):
    """A split prefill in chunks of `chunk` tokens (0: the prompt crosses at once): the edge's layers, the
    wire and the cloud's layers work on different chunks at once, a three-stage pipeline of k chunks:
        n_cross·RTT/2 + (E + N + C)/k + (k − 1)/k · max(E, N, C)
    with E the edge's compute, N the crossings' wire time and C the rest of the serial pass."""
    k = jnp.where(chunk > 0, jnp.maximum(jnp.ceil(prompt / jnp.maximum(chunk, 1.0)), 1.0), 1.0)
    wire = n_cross * jnp.maximum(crossing - rtt / 2, 0.0)
    rest = jnp.maximum(serial - edge_s - wire - n_cross * rtt / 2, 0.0)
    stages = jnp.stack([edge_s, wire, rest])
    return jnp.minimum(serial, n_cross * rtt / 2 + stages.sum() / k + (k - 1) / k * stages.max())


# ----------------------------------------------------------------------------- one request
def _lookup(params: EnvParams, b, pre_ctx, dec_ctx):
    """The boundary's packed rows [2 phases, K] and the model totals [2, M], prefill at context `pre_ctx` and
    decode at `dec_ctx`: one gather of both grid neighbours."""
    c = params.costs
    L = c.layer_rows.shape[0] - 1
    i_pre, w_pre = lerp_index(c.ctx_grid, pre_ctx)
    i_dec, w_dec = lerp_index(c.ctx_grid, dec_ctx)
    idx, wts = jnp.stack([i_pre, i_dec]), jnp.stack([w_pre, w_dec])
    phase = jnp.arange(2)
    near = c.layer_rows[jnp.minimum(b, L), jnp.stack([idx, idx + 1]), jnp.stack([phase, phase])]  # [2 neighbours, 2 phases, K]
    rows = near[0] * (1 - wts[:, None]) + near[1] * wts[:, None]
    tot = (jnp.take_along_axis(c.model_rows, idx[:, None, None], -1)[..., 0] * (1 - wts[:, None])
           + jnp.take_along_axis(c.model_rows, idx[:, None, None] + 1, -1)[..., 0] * wts[:, None])  # [2, M]
    return materialise((rows, tot))   # read by many fusions: interpolated once


def _throttled(rows, tot, edge_speed):
    """The looked-up rows with every edge compute time over the edge's speed (thermal throttling,
    splitrl/env/heat.py); joules unchanged."""
    if isinstance(edge_speed, float) and edge_speed == 1.0:   # no heat: nothing to trace
        return rows, tot
    m = compute_time_masks((rows.shape[-1] - 9) // 3)
    slow = 1.0 / edge_speed - 1.0
    return rows * (1.0 + slow * m["layer_edge"]), tot * (1.0 + slow * m["model_edge"])


class Timing(NamedTuple):
    """The chosen plan's time course, for the timeout: the first token after `pre`, then one per `tok`."""
    pre: jax.Array        # s until the first generated token is back at the edge
    tok: jax.Array        # s per further generated token
    edge_pre: jax.Array   # edge compute s (and J below) spent in `pre` and per token
    edge_tok: jax.Array
    edge_pre_j: jax.Array
    edge_tok_j: jax.Array
    prefix: jax.Array     # edge prefill s/token of what the edge holds (its KV cache survives a fallback)
    prefix_j: jax.Array   # ... J/token
    cloud_pre: jax.Array  # cloud compute s of the prefill pass, and of each further token, at batch 1
    cloud_tok: jax.Array  # (without the background batch's slowdown: the work the cloud does)


def request_cost(params: EnvParams, boundary, fmt, edge_units, prompt, output, cond: Conditions,
                 draws=None) -> dict:
    """Metrics of one request (prompt + output tokens) under the partition, in this slot's conditions.

    edge_units: f32[U] in {0, 1}, already masked (`project_action`). draws: f32[3] uniforms + 1 normal
    for the retransmissions (the env's step), or None for their expectation (a controller's model).
    Returns a dict of f32 scalars.
    """
    c, ch = params.costs, params.channel
    L = c.layer_rows.shape[0] - 1
    b, edge_units = edge_available(cond, boundary, edge_units)
    cloud_only = (b == 0) & ~jnp.any(edge_units > 0)
    edge_only = (b >= L) | ((b == L - 1) & jnp.all(edge_units > 0))
    # a conversation's later turn prefills its new tokens at the whole context (cached + new); decode is
    # linear in context, so its midpoint is exact
    rows, tot = _throttled(*_lookup(params, b, cond.ctx + prompt, cond.ctx + prompt + output / 2), cond.edge_speed)
    model, head = decode_model_row(tot), decode_model_row(tot[1])
    residual = cond.loss_p ** (ch.max_retx + 1.0)   # loss left after the retransmission rounds

    # crossings: prefill hidden state, one decode token's hidden state, a token id, the prompt's ids
    hidden = c.tx_bytes[fmt]
    sizes = jnp.stack([prompt * hidden, hidden, TOKEN_ID_BYTES, prompt * TOKEN_ID_BYTES])
    if draws is None:
        X = transfer_time(sizes, cond.bw, cond.rtt, cond.loss_p, ch.packet_bytes, ch.max_retx)
    else:   # the prefill's and the prompt's rounds drawn; per token: the expectation, and the CLT below
        X, expected, std = crossings(sizes, cond.bw, cond.rtt, cond.loss_p, ch.packet_bytes, ch.max_retx,
                                     jnp.stack([draws[0], 1.0, 1.0, draws[1]]), std_of=1)
        X = X.at[1:3].set(expected[1:3])
    phases = Phase(row=decode_layer_row(rows, edge_units.shape[0]), model=model, head=head,
                   n_tok=jnp.stack([prompt, 1.0]), crossing=X[:2],
                   cloud=jnp.stack([1.0, decode_factor(params.cloud, cond.cloud_load)]), mix=c.mix.T)
    # read by many fusions: the passes' chains of adds computed once
    t, es, ej, n_up, n_down, cs = materialise(jax.vmap(_pass, in_axes=(Phase(0, 0, None, 0, 0, 0, 0), None, None, None))(
        phases, edge_units, c.unit_is_attn, jnp.minimum(b, L - 1) == L - 1))
    t = t.at[0].set(pipelined(t[0], es[0], n_up[0] + n_down[0], X[0], cond.rtt, prompt, ch.prefill_chunk))
    start = cond.cloud_wait + cond.reconnect   # a batch slot, and a link that just came back
    split = Timing(pre=start + t[0] + X[2], tok=t[1] + X[2], edge_pre=es[0], edge_tok=es[1], edge_pre_j=ej[0],
                   edge_tok_j=ej[1], prefix=phases.row.prefix[0] + model.edge_embed[0],
                   prefix_j=phases.row.prefix_j[0] + model.edge_embed_j[0], cloud_pre=cs[0] / phases.cloud[0],
                   cloud_tok=cs[1] / phases.cloud[1])
    c_alone = phases.n_tok * (model.cloud_embed + model.cloud_all) + head.cloud_head
    c_pass = phases.cloud * c_alone
    cloud = Timing(pre=start + X[3] + c_pass[0] + cond.rtt / 2, tok=c_pass[1], edge_pre=0.0, edge_tok=0.0,
                   edge_pre_j=0.0, edge_tok_j=0.0, prefix=0.0, prefix_j=0.0, cloud_pre=c_alone[0],
                   cloud_tok=c_alone[1])
    e_pass = phases.n_tok * (model.edge_embed + model.edge_all) + head.edge_head
    e_pass_j = phases.n_tok * (model.edge_embed_j + model.edge_all_j) + head.edge_head_j
    edge = Timing(pre=e_pass[0], tok=e_pass[1], edge_pre=e_pass[0], edge_tok=e_pass[1], edge_pre_j=e_pass_j[0],
                  edge_tok_j=e_pass_j[1], prefix=0.0, prefix_j=0.0, cloud_pre=0.0, cloud_tok=0.0)
    plan = jax.tree.map(lambda e, cl, s: jnp.where(edge_only, e, jnp.where(cloud_only, cl, s)), edge, cloud, split)
    crossings_per_tok = jnp.where(cloud_only | edge_only, 0.0, n_up[1] + n_down[1] + 1.0)
    steps = jnp.maximum(output - 1.0, 0.0)   # decode steps: the prefill pass already yields the first token
    jitter = 0.0 if draws is None else jnp.sqrt(steps * crossings_per_tok) * draws[2] * std   # of sizes[1]: hidden
    m = {"latency": jnp.maximum(plan.pre + steps * plan.tok + jitter, plan.pre),
         "edge_s": plan.edge_pre + steps * plan.edge_tok, "compute_j": plan.edge_pre_j + steps * plan.edge_tok_j,
         "up": jnp.where(edge_only, 0.0, jnp.where(cloud_only, sizes[3], n_up[0] * sizes[0] + steps * n_up[1] * hidden)),
         "down": jnp.where(edge_only, 0.0, jnp.where(cloud_only, output * TOKEN_ID_BYTES, n_down[0] * sizes[0]
                                                      + steps * n_down[1] * hidden + output * TOKEN_ID_BYTES)),
         "dppl": jnp.where(edge_only | cloud_only, 0.0, delta_ppl(params, b, fmt, edge_units, residual, cond.snr_db))}
    # no conversation cache (a plain 0.0, not a traced value: `link_conditions`): nothing to move, nothing traced
    no_cache = isinstance(cond.ctx, float) and cond.ctx == 0.0
    mig = {k: 0.0 for k in ("time", "up", "down", "edge_s", "edge_j", "cloud_s")} if no_cache else \
        sessions.migration(params, b, fmt, edge_units, model, cond)
    m = m | {"latency": m["latency"] + mig["time"], "edge_s": m["edge_s"] + mig["edge_s"],
             "compute_j": m["compute_j"] + mig["edge_j"], "up": m["up"] + mig["up"], "down": m["down"] + mig["down"]}
    out = _finish(params, m, plan, edge, edge_only, prompt, output, model, cond)
    down = cond.connected < 0.5
    return out | {"residual_loss": residual, "cloud_prefill_s": out["cloud_prefill_s"] + jnp.where(down, 0.0, mig["cloud_s"]),
                  "migration_s": jnp.where(down, 0.0, mig["time"]),
                  "migration_bytes": jnp.where(down, 0.0, mig["up"] + mig["down"])}


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


def _finish(params: EnvParams, m: dict, plan: Timing, edge: Timing, edge_only, prompt, output, model,
            cond: Conditions) -> dict:
    """The request's outcome: served as planned; run on the edge alone because the link is down; resumed
    on the edge from its last token past the timeout; or failed (the edge cannot hold the model)."""
    c, ch = params.costs, params.channel
    can_fallback = c.boundary_mask[-1] & (cond.edge_up > 0.5)   # a model that fits, on an edge that may run
    down = (cond.connected < 0.5) & ~edge_only
    timed_out = (m["latency"] > ch.timeout_s) & ~edge_only & ~down
    failed = (timed_out | down) & ~can_fallback
    # kept at the timeout: the tokens generated so far (the first at `pre`, then one per `tok`) and the KV
    # cache of the layers the edge held
    started = ch.timeout_s >= plan.pre
    steps_done = jnp.where(started, jnp.clip(jnp.floor((ch.timeout_s - plan.pre) / jnp.maximum(plan.tok, 1e-9)),
                                             0.0, jnp.maximum(output - 1.0, 0.0)), 0.0)
    done = jnp.where(started, 1.0 + steps_done, 0.0)
    ran_s = jnp.where(started, plan.edge_pre + steps_done * plan.edge_tok, 0.0)
    ran_j = jnp.where(started, plan.edge_pre_j + steps_done * plan.edge_tok_j, 0.0)
    # resumed: rebuild the other layers' KV cache over the context so far, then decode the rest alone
    ctx, rest = cond.ctx + prompt + done, output - done
    rebuild_s = ctx * jnp.maximum(model.edge_embed[0] + model.edge_all[0] - plan.prefix, 0.0)
    rebuild_j = ctx * jnp.maximum(model.edge_embed_j[0] + model.edge_all_j[0] - plan.prefix_j, 0.0)
    resumed = (ch.timeout_s + rebuild_s + rest * edge.tok, ran_s + rebuild_s + rest * edge.tok,
               ran_j + rebuild_j + rest * edge.edge_tok_j)
    steps = jnp.maximum(output - 1.0, 0.0)
    # alone, the edge first rebuilds the conversation's cache of the layers it did not hold (layer-tokens)
    L = c.layer_rows.shape[0] - 1
    lacking = cond.ctx * jnp.clip(L - cond.kv_split, 0.0, L) / L
    alone = (ch.detect_s + edge.pre + steps * edge.tok + lacking * model.edge_all[0],
             edge.pre + steps * edge.tok + lacking * model.edge_all[0],
             edge.edge_pre_j + steps * edge.edge_tok_j + lacking * model.edge_all_j[0])
    gave_up = (ch.timeout_s, jnp.where(timed_out, ran_s, 0.0), jnp.where(timed_out, ran_j, 0.0))
    planned = (m["latency"], m["edge_s"], m["compute_j"])
    latency, edge_s, compute_j = (
        jnp.where(failed, gave_up[i], jnp.where(timed_out, resumed[i], jnp.where(down, alone[i], planned[i])))
        for i in range(3))
    up = jnp.where(down, 0.0, jnp.where(timed_out, jnp.minimum(m["up"], cond.bw * ch.timeout_s), m["up"]))
    used_link = ~edge_only & ~down
    energy = (compute_j + c.power_idle_w * jnp.maximum(latency - edge_s, 0.0)
              + radio_energy(params, up, jnp.where(down, 0.0, m["down"]), latency, used_link, cond))
    # a resumed request's tokens from before the timeout carry the split's damage; the rest none
    dppl = jnp.where(failed | down, 0.0, jnp.where(timed_out, m["dppl"] * done / jnp.maximum(output, 1.0), m["dppl"]))
    return {"latency": latency, "energy": energy, "delta_ppl": dppl,
            "bytes_up": up, "bytes_down": jnp.where(down, 0.0, m["down"]), "edge_compute_s": edge_s,
            "timed_out": timed_out.astype(jnp.float32), "fell_back": (down & can_fallback).astype(jnp.float32),
            "failed": failed.astype(jnp.float32), "cloud_wait": jnp.where(edge_only | down, 0.0, cond.cloud_wait),
            **_cloud_work(plan, down | edge_only, timed_out, started, steps_done, steps)}


def _cloud_work(plan: Timing, off, timed_out, started, steps_done, steps) -> dict:
    """The cloud compute a request used, at batch 1 (the fleet env turns it into shared work): its prefill
    and its decode steps; a request that timed out only what ran before the timeout (its first token
    came back, then `steps_done` steps), one that never reached the cloud nothing."""
    pre = jnp.where(off | (timed_out & ~started), 0.0, plan.cloud_pre)
    dec = jnp.where(off, 0.0, jnp.where(timed_out, steps_done, steps) * plan.cloud_tok)
    return {"cloud_prefill_s": pre, "cloud_decode_s": dec}


def radio_energy(params: EnvParams, up, down, latency, used_link, cond: Conditions):
    """Joules the edge's radio adds to a request (Huang et al.'s LTE power model, splitrl/profiles/radio.py):
    transfers (active time incl. the expected resent share) at transfer_w plus per-Mbit tx/rx energy, the
    connected state for the rest of the request, and the tail after it and the promotion before it, in
    expectation over exponential gaps between requests (mean 1 / arrival rate)."""
    rd, ch = params.radio, params.channel
    needed, _ = _rounds(up, cond.bw, cond.rtt, cond.loss_p, ch.packet_bytes, ch.max_retx)
    resent = up * last_axis_sum(needed * loss_powers(cond.loss_p))
    active = (up + resent + down) / cond.bw
    gap = 1.0 / jnp.maximum(params.workload.arrival_rate, 1e-6)
    idle_before = jnp.exp(-rd.tail_s / gap)                     # P(no request in the tail before this one)
    linked = (rd.transfer_w * active + rd.tx_j_per_mbit * (up + resent) * 8e-6 + rd.rx_j_per_mbit * down * 8e-6
              + rd.connected_w * jnp.maximum(latency - active, 0.0)
              + rd.tail_w * gap * (1.0 - jnp.exp(-rd.tail_s / gap)) + idle_before * rd.promotion_w * rd.promotion_s)
    return jnp.where(used_link, linked, 0.0)


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
