"""A conversation on the edge runtime: the caches of earlier turns stay where each layer ran, on the edge
and on the cloud (which keeps them between turns), and move when a turn's plan places them elsewhere,
as splitrl/runtime/conversation.py says (the simulator's rule).

A turn, with the chat's caches held on the cloud at `ctx` positions:

    MIGRATE the caches that change side (K/V, or the lowest moved layer's input and a recompute: `choose`)
    TURN + the turn's steps (split or cloud-only), CLOSE (the cloud keeps the chat); edge-only: no cloud

Nothing is lost when the link or the cloud fails: a turn that cannot go on as a continuation (the
cloud lost the chat, the link broke mid-turn) is answered as a fresh chat whose prompt is every token
so far, through `EdgeClient.generate` with its retries, other endpoints and edge fallback; tokens
already delivered are not repeated. That costs a prefill of the whole history, and is counted.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from splitrl.runtime import conversation as C
from splitrl.runtime import protocol as P
from splitrl.runtime import wire
from splitrl.runtime.edge import EdgeClient, RemoteLink, Request, Result
from splitrl.runtime.split_model import EdgeSession, Plan


@dataclasses.dataclass
class Migration:
    how: str
    seconds: float      # measured: from MIGRATE to the cloud's OK
    predicted_s: float  # the rule's expectation with the edge's link estimates
    nbytes: int         # what crossed (frames included)
    layers: float       # layers moved (attention units / units per layer)


class LayerSpeed:
    """Seconds per token of one layer in a prefill, on the edge and on the cloud, as this runtime measures
    them (EWMA over prefill steps of >= 8 tokens: the edge times its own layers, the cloud reports its
    compute in TOKEN frames); `prior` until the first measurement. What a recompute's price needs."""

    def __init__(self, prior: C.Prices, alpha: float = 0.3):
        self.prior, self.alpha = prior, alpha
        self.seconds = {"edge": prior.edge_layer_s, "cloud": prior.cloud_layer_s}
        self.samples = {"edge": 0, "cloud": 0}

    def observe(self, side: str, seconds: float, tokens: int, layers: float) -> None:
        if tokens < 8 or layers <= 0 or seconds <= 0:
            return
        x, old = seconds / (tokens * layers), self.seconds[side]
        self.seconds[side] = x if self.samples[side] == 0 else (1 - self.alpha) * old + self.alpha * x
        self.samples[side] += 1

    @property
    def prices(self) -> C.Prices:
        return C.Prices(self.prior.kv_bytes, self.seconds["edge"], self.seconds["cloud"])


class EdgeChat:
    """One conversation of an `EdgeClient`: its tokens, its edge caches, and which endpoint keeps the rest.
    `prices`: fixed prices for the choice of how caches move; default, this runtime's measured layer speeds
    (`LayerSpeed`, starting from 1 ms per token-layer on the edge and 0.1 ms on the cloud)."""

    def __init__(self, client: EdgeClient, prices: C.Prices | None = None, force: str = "auto"):
        self.client, self.force = client, force
        self.speed = None if prices is not None else LayerSpeed(C.Prices.of(client.sm, 1e-3, 1e-4))
        self._prices = prices
        self.wire_id = client._wire_ids.getrandbits(63)
        self.edge: EdgeSession | None = None
        self.plan: Plan | None = None
        self.endpoint: int | None = None     # the endpoint holding the chat's cloud caches (None: none holds them)
        self.fed: list[int] = []             # tokens both sides' caches cover, in order
        self.pending: list[int] = []         # the last answer's final token, not fed yet
        self.migrations: list[Migration] = []
        self.rebuilds = 0                    # turns answered as a fresh chat (the first, and after a failure)
        self.turns = 0
        self._rid = 0

    @property
    def ctx(self) -> int:
        return len(self.fed)

    @property
    def prices(self) -> C.Prices:
        return self._prices if self.speed is None else self.speed.prices

    @property
    def kv_split(self) -> float:
        """Layers whose cache is on the edge (the env's `kv_split`; 0 before the first turn)."""
        return 0.0 if self.plan is None else C.split_point(self.plan)

    def started(self, edge: EdgeSession, endpoint: int | None) -> None:
        """EdgeClient.generate answered a fresh turn: `edge` holds the edge's caches, `endpoint` the cloud's."""
        self.edge, self.endpoint = edge, endpoint

    # ---- one turn ----
    def turn(self, new_ids: Sequence[int], plan: Plan, max_new: int) -> Result:
        """Answer the next user message (`new_ids`) under `plan`, with the conversation's caches."""
        self._rid += 1
        ids = self.pending + list(new_ids)
        res = Result(self._rid, "ok", [], plan)
        t0 = time.perf_counter()
        counters = ("bytes_up", "bytes_down", "cloud_s", "cloud_wait_s")
        before = {c: sum(getattr(lk, c) for lk in self.client.links) for c in counters}
        # a continuation needs the edge's caches and the cloud's (held by an endpoint, or none yet: all on the edge)
        if self.edge is not None and (self.endpoint is not None or self.plan.mode == "edge_only"):
            try:
                self._continue(ids, plan, max_new, res)
            except (P.FrameError, OSError) as e:
                self.client.errors[f"chat/{getattr(e, 'reason', type(e).__name__)}"] += 1
                self.endpoint = None
        if res.status == "ok" and (len(res.tokens) < max_new and not self._ended(res)):
            self._rebuild(ids, plan, max_new, res)
        res.total_s = time.perf_counter() - t0
        res.latency_s = res.answered_at - t0 if res.tokens else res.total_s
        for c in counters:                        # this turn's, the move of the caches included
            setattr(res, c, sum(getattr(lk, c) for lk in self.client.links) - before[c])
        self.turns += 1
        self.plan = plan
        self.fed += ids + res.tokens[:-1]
        self.pending = res.tokens[-1:]
        return res

    def forget(self) -> None:
        """Tell the cloud the conversation is over (best effort: it expires anyway)."""
        if self.endpoint is not None:
            link = self.client.links[self.endpoint]
            try:
                link.send(P.Frame(P.Kind.FORGET, self.wire_id))
                link.expect(self.wire_id, 0, P.Kind.OK)
            except (P.FrameError, OSError):
                link.close()
        self.endpoint = None

    def _ended(self, res: Result) -> bool:
        return self.client.eos is not None and bool(res.tokens) and res.tokens[-1] == self.client.eos

    def _continue(self, ids: list[int], plan: Plan, max_new: int, res: Result) -> None:
        """The turn as a continuation of the caches both sides hold (raises on any failure)."""
        edge, sm = self.edge, self.client.sm
        link = self.client.links[self.endpoint if self.endpoint is not None else 0]
        ms = C.moves(self.plan, plan)
        if ms:
            self._migrate(link, ms, plan)
        edge.plan = plan
        edge.pos = self.ctx
        if plan.mode == "edge_only":
            for step in range(max_new):
                t0 = time.perf_counter()
                res.add(int(edge.up(ids)["token"][0]))
                if self.speed is not None and step == 0:
                    self.speed.observe("edge", time.perf_counter() - t0, len(ids), sm.n_layers)
                if self._ended(res):
                    break
                ids = [res.tokens[-1]]
            return
        rid = self.client._wire_ids.getrandbits(64)

        def turn_open(link, rid, plan, n):
            link.turn(rid, self.wire_id, self.ctx, plan, n)
        if plan.mode == "cloud_only":
            link.cloud_only(rid, plan, ids, 0, max_new, self.client.eos, res.add, turn_open)
        else:
            turn_open(link, rid, plan, max_new)
            for seq in range(max_new):
                t0 = time.perf_counter()
                raw = edge.up(ids)
                edge_s, cloud_before = time.perf_counter() - t0, link.cloud_s
                up = {k: wire.encode(v, plan.fmt) for k, v in raw.items()}
                tok, _ = link.step(rid, seq, plan, up, len(ids), sm.d_model, edge)
                if self.speed is not None and seq == 0:          # the prefill times both sides' layers
                    split = C.split_point(plan)
                    self.speed.observe("edge", edge_s, len(ids), split)
                    self.speed.observe("cloud", link.cloud_s - cloud_before, len(ids), sm.n_layers - split)
                res.add(tok)
                if self._ended(res):
                    break
                ids = [tok]
        link.close_request(rid)
        self.endpoint = self.client.links.index(link)

    def _migrate(self, link: RemoteLink, ms: list[C.Move], plan: Plan) -> None:
        sm, est, ctx = self.client.sm, self.client.est, self.ctx
        choice = C.choose(ms, ctx, plan.fmt, sm.d_model, sm.attn_units, self.prices, est.bw, est.rtt, self.force)
        link.connect()
        t0, before = time.perf_counter(), link.bytes_up + link.bytes_down
        how = 0 if choice.how == "kv" else 1
        link.send(P.array_frame(P.Kind.MIGRATE, [ctx, how, *self.plan.to_ints(), *plan.to_ints()], self.wire_id, 0,
                                P.DType.I64))
        conv = self.wire_id
        C.move_over_link(self.edge, True, ms, choice.how, ctx, plan.fmt, conv, link.send, link.read)
        link.expect(conv, 0, P.Kind.OK)
        self.migrations.append(Migration(choice.how, time.perf_counter() - t0, choice.seconds,
                                         link.bytes_up + link.bytes_down - before, C.moved_layers(ms, sm.attn_units)))

    def _rebuild(self, ids: list[int], plan: Plan, max_new: int, res: Result) -> None:
        """Answer the rest of the turn as a fresh chat over every token so far (retries, endpoints, fallback)."""
        self.rebuilds += 1
        self.wire_id = self.client._wire_ids.getrandbits(63)
        prompt = tuple(self.fed + ids + res.tokens)
        rid = next(self.client.own_rids)
        rest = self.client.generate(Request(rid, prompt, max_new - len(res.tokens)), plan, chat=self)
        for tok in rest.tokens:
            res.add(tok)
        res.status, res.error, res.retries, res.fell_back = rest.status, rest.error, rest.retries, rest.fell_back
