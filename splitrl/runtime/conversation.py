"""Conversations: a chat's KV cache stays where each layer ran, and moves when the split changes between
turns, by the rule the simulator prices (splitrl/env/sessions.py `migration`, docs/harness.md
"Conversations"):

- the cache of layer l's attention unit u lives on the edge when the last turn's plan ran it there
  (`edge_attn_units`): every unit of the layers below the boundary, the plan's edge units of the
  boundary layer; FFN chunks keep no cache;
- a turn whose plan places some units elsewhere first moves their caches (`moves`), by the cheaper of
  (`choose`): their K/V (fp16) over the link, or the hidden state at the lowest moved layer over the link
  (in the turn's transmission format) and the destination recomputing the moved layers over the context;
- both sides keep every layer's input hidden state for the positions they computed or received
  (`kv.Hidden`; the env's assumption **A**), so between them they hold the source of any recompute.

`migrate` runs a move with both sides' sessions at hand (one process; `send` stands for the link), and
`LocalConversation` runs whole conversations that way: the reference the network runtime is tested
against (splitrl.runtime.edge `EdgeClient.turn`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch

from splitrl.runtime import protocol as P
from splitrl.runtime import validate as V
from splitrl.runtime import wire
from splitrl.runtime.kv import KV
from splitrl.runtime.split_model import CloudSession, EdgeSession, Plan, SplitModel, step_in_process

KV_FORMAT = "fp16"      # K/V cross in fp16, as the env's kv_bytes counts them


def edge_attn_units(plan: Plan, layer: int) -> tuple[int, ...]:
    """The attention units of `layer` whose KV cache lives on the edge after a turn under `plan`."""
    if layer < plan.boundary:
        return tuple(range(plan.attn_units))
    return plan.edge_attn if layer == plan.boundary and plan.mode == "split" else ()


def split_point(plan: Plan) -> float:
    """Layers whose cache is on the edge, the boundary layer by its share of attention units (the env's
    `kv_split`, splitrl/env/sessions.py `split_point`)."""
    if plan.boundary >= plan.n_layers:
        return float(plan.n_layers)
    return plan.boundary + len(edge_attn_units(plan, plan.boundary)) / plan.attn_units


@dataclasses.dataclass(frozen=True)
class Move:
    layer: int
    units: tuple[int, ...]
    to_edge: bool


def moves(old: Plan, new: Plan) -> list[Move]:
    """The caches that change side between a turn under `old` and one under `new`, lowest layer first."""
    out = []
    for layer in range(old.n_layers):
        before, after = set(edge_attn_units(old, layer)), set(edge_attn_units(new, layer))
        if before - after:
            out.append(Move(layer, tuple(sorted(before - after)), False))
        if after - before:
            out.append(Move(layer, tuple(sorted(after - before)), True))
    return out


def moved_layers(ms: Sequence[Move], attn_units: int) -> float:
    return sum(len(m.units) for m in ms) / attn_units


@dataclasses.dataclass(frozen=True)
class Prices:
    """What the choice needs besides the link: K/V bytes per token of one layer (fp16), and each side's
    prefill seconds per token of one (mean) layer, from the scenario's cost tables or a calibration."""
    kv_bytes: float
    edge_layer_s: float
    cloud_layer_s: float

    @classmethod
    def of(cls, sm: SplitModel, edge_layer_s: float, cloud_layer_s: float) -> Prices:
        return cls(2.0 * sm.n_kv * sm.head_dim * 2.0, edge_layer_s, cloud_layer_s)


@dataclasses.dataclass(frozen=True)
class Choice:
    how: str            # "none" | "kv" | "recompute"
    seconds: float      # the expected time of the move (wire + recompute)
    nbytes: float       # what crosses the link
    to_edge: bool


def choose(ms: Sequence[Move], ctx: int, fmt: str, d_model: int, attn_units: int, prices: Prices, bw: float,
           rtt: float, force: str = "auto") -> Choice:
    """The env's rule (splitrl/env/sessions.py `migration`, loss-free: the runtime's bandwidth estimate
    already includes retransmissions): K/V over the link, or the boundary hidden state over the link plus
    the destination's prefill of the moved layers, whichever is expected sooner. Caches moving both ways
    at once (the same boundary, units swapped) always move as K/V. `force` = "kv" | "recompute" for tests."""
    moved = moved_layers(ms, attn_units)
    if not ms or ctx == 0:
        return Choice("none", 0.0, 0.0, False)
    to_edge = ms[0].to_edge
    one_way = all(m.to_edge == to_edge for m in ms)
    kv_bytes = ctx * prices.kv_bytes * moved
    hid_bytes = ctx * wire.row_bytes(d_model, fmt)
    layer_s = prices.edge_layer_s if to_edge else prices.cloud_layer_s
    t_kv = rtt / 2 + kv_bytes / bw
    t_re = rtt / 2 + hid_bytes / bw + ctx * moved * layer_s
    how = force if force != "auto" else ("recompute" if t_re < t_kv else "kv")
    if how == "recompute" and not one_way:
        how = "kv"
    return Choice(how, t_re if how == "recompute" else t_kv, hid_bytes if how == "recompute" else kv_bytes, to_edge)


# ----------------------------------------------------------------------------- the move itself
Side = EdgeSession | CloudSession


def take_kv(side: Side, ms: Sequence[Move]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The K/V of the moving units, removed from the sending side, in `ms` order."""
    return [side.caches[m.layer].take(m.units) for m in ms]


def put_kv(side: Side, ms: Sequence[Move], kvs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for m, (k, v) in zip(ms, kvs, strict=True):
        side.caches[m.layer].put(m.units, k, v)


def hidden_rows(side: Side, layer: int, ctx: int) -> list[tuple[int, torch.Tensor]]:
    """This side's record of `layer`'s input over positions < ctx, as (start, [1, n, d]) runs."""
    rec = side.hidden[layer]
    if rec.h is None:
        return []
    have = rec.have[:ctx].tolist()
    runs, t = [], 0
    while t < len(have):
        if have[t]:
            end = t
            while end < len(have) and have[end]:
                end += 1
            runs.append((t, rec.h[:, t:end]))
            t = end
        else:
            t += 1
    return runs


@torch.inference_mode()
def recompute(side: Side, ms: Sequence[Move], ctx: int, received: Sequence[tuple[int, torch.Tensor]]) -> None:
    """Rebuild the moving units' caches on the destination: the lowest moved layer's input over the
    context (its own record, then the runs the sender sent), then the moved layers as one prefill (whole
    layers below the top moved one, whose input the next needs; only the moving units at the top)."""
    sm = side.sm
    for start, x in received:
        side.hidden[ms[0].layer].record(start, x)
    rec = side.hidden[ms[0].layer]
    if rec.h is None or rec.h.shape[1] < ctx or not bool(rec.have[:ctx].all()):
        raise ValueError(f"recompute of layer {ms[0].layer}: the input of positions < {ctx} is not all at hand")
    h = rec.h[:, :ctx]
    rope = sm.rope(h, 0)
    by_layer: dict[int, tuple[int, ...]] = {}
    for m in ms:
        by_layer[m.layer] = tuple(sorted(by_layer.get(m.layer, ()) + m.units))
    top = max(by_layer)
    for layer in range(ms[0].layer, top + 1):
        side.hidden[layer].record(0, h)
        tmp = KV()
        if layer < top:
            h = sm.full_layer(h, layer, tmp, rope)
        else:
            sm.attention(sm.layers[layer].input_layernorm(h), layer, by_layer[layer], tmp, rope)
        units = by_layer.get(layer, ())
        if units:
            side.caches[layer].put(units, *tmp.take(units))


def migrate(edge: EdgeSession, cloud: CloudSession, old: Plan, new: Plan, ctx: int, choice: Choice,
            send: Callable[[str, torch.Tensor], torch.Tensor] = lambda name, x: x) -> None:
    """Move the caches from the turn under `old` to the turn under `new` with both sides in this process;
    every tensor that would cross goes through `send` (K/V in fp16, hidden states in new.fmt)."""
    ms = moves(old, new)
    if choice.how == "none":
        return
    if choice.how == "kv":
        for m in ms:
            src, dst = (cloud, edge) if m.to_edge else (edge, cloud)
            k, v = src.caches[m.layer].take(m.units)
            dst.caches[m.layer].put(m.units, send("k", k), send("v", v))
        return
    src, dst = (cloud, edge) if choice.to_edge else (edge, cloud)
    rows = [(s, send("hid", x)) for s, x in hidden_rows(src, ms[0].layer, ctx)]
    for m in ms:
        src.caches[m.layer].take(m.units)
    recompute(dst, ms, ctx, rows)


def move_over_link(side: Side, on_edge: bool, ms: Sequence[Move], how: str, ctx: int, fmt: str, conv: int,
                   write: Callable[[P.Frame], None], read: Callable[[], P.Frame],
                   compute: Callable[[Callable[[], None]], None] = lambda fn: fn()) -> None:
    """This end's half of a MIGRATE after its header, the same on the edge and the cloud: the caches this
    side holds and loses go out (KV_MOVE per move, or the lowest moved layer's input as HID_MOVE runs and
    MOVED), those it gains come in, checked (validate.kv_move, hidden_run), and are put or recomputed
    (`compute` runs the recompute: the cloud holds its model lock for it)."""
    sm = side.sm
    if how == "kv":
        for m in ms:
            if m.to_edge != on_edge:                 # this side holds the cache: it goes out
                k, v = side.caches[m.layer].take(m.units)
                write(P.activation_frame(P.Kind.KV_MOVE, torch.stack([k[0], v[0]]), KV_FORMAT, conv, m.layer))
            else:
                kv = V.kv_move(read(), sm, conv, m, ctx)
                side.caches[m.layer].put(m.units, kv[0:1], kv[1:2])
        return
    if ms[0].to_edge != on_edge:                     # this side sends the recompute's source
        runs = hidden_rows(side, ms[0].layer, ctx)
        for start, x in runs:
            write(P.activation_frame(P.Kind.HID_MOVE, x, fmt, conv, start))
        write(P.Frame(P.Kind.MOVED, conv, len(runs)))
        for m in ms:
            side.caches[m.layer].take(m.units)
        return
    received = []
    while (f := read()).kind == P.Kind.HID_MOVE:
        received.append(V.hidden_run(f, sm, conv, fmt, ctx))
    if f.kind != P.Kind.MOVED or f.request_id != conv or f.seq != len(received):
        raise P.FrameError("unexpected", f"{f.kind.name} where MOVED of conversation {conv} belongs")
    compute(lambda: recompute(side, ms, ctx, received))


def wire_send(fmt: str) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """What the link does to a tensor: K/V through fp16, hidden states and activations through `fmt`."""
    return lambda name, x: wire.roundtrip(x, KV_FORMAT if name in ("k", "v") else fmt)


class LocalConversation:
    """A chat with both sides in this process: each turn migrates the caches to its plan and generates."""

    def __init__(self, sm: SplitModel, prices: Prices | None = None, force: str = "auto", bw: float = 12.5e6,
                 rtt: float = 0.02):
        self.sm, self.force, self.bw, self.rtt = sm, force, bw, rtt
        self.prices = prices or Prices.of(sm, 1e-3, 1e-4)
        self.edge: EdgeSession | None = None
        self.cloud: CloudSession | None = None
        self.plan: Plan | None = None
        self.ctx = 0                    # positions both sides' caches cover
        self.pending: list[int] = []    # the last answer's final token: generated, not yet fed
        self.choices: list[Choice] = []

    def turn(self, new_ids: Sequence[int], plan: Plan, max_new: int) -> list[int]:
        sm = self.sm
        if self.edge is None:
            self.edge, self.cloud = EdgeSession(sm, plan, record=True), CloudSession(sm, plan, record=True)
        else:
            ms = moves(self.plan, plan)
            choice = choose(ms, self.ctx, plan.fmt, sm.d_model, sm.attn_units, self.prices, self.bw, self.rtt,
                            self.force)
            self.choices.append(choice)
            migrate(self.edge, self.cloud, self.plan, plan, self.ctx, choice, wire_send(plan.fmt))
        self.edge.plan = self.cloud.plan = self.plan = plan
        self.edge.pos = self.cloud.pos = self.ctx
        ids, tokens = self.pending + list(new_ids), []
        send = wire_send(plan.fmt)
        for _ in range(max_new):
            tokens.append(step_in_process(self.edge, self.cloud, ids, send))
            self.ctx += len(ids)
            self.cloud.pos = self.ctx        # an edge-only step leaves the cloud's counter behind
            ids = [tokens[-1]]
        self.pending = ids
        return tokens
