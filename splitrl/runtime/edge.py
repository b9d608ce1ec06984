"""`splitrl-edge`: the edge half of split inference, with partition checkpoints, retries and fallback.

For each request the edge asks the policy for a partition (with its own bandwidth/RTT estimates),
runs its share step by step, and keeps a **partition checkpoint**: the exact bytes of every tensor it
sent up so far (and of the step in flight). When a transfer fails (reset, timeout, bad frame, the
cloud gone), it retries with exponential backoff and jitter: reconnect, OPEN the request again and
replay the checkpoint, so the cloud rebuilds its KV caches and the step continues where it stopped.
After `attempts` failures on an endpoint it moves to the next endpoint, and after the last one it
runs the cloud's share itself from the same checkpoint (`fallback="edge"`) or fails the request
with the reason (`fallback="none"`). The answer is delivered once; the cloud refuses a CLOSEd id.
On the wire each request has a fresh random 64-bit id (the caller's `Request.rid` stays local), so
two runs of the edge, or two edges, never collide on the cloud. A cloud that refuses the request
itself (busy, draining, a limit) or reports itself not ready is not retried: the next endpoint is.

Because the replayed bytes are the bytes the cloud saw, a recovered request gives the same tokens
as an undisturbed one (the fault tests check this).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence

import torch

from splitrl.runtime import auth, wire
from splitrl.runtime import protocol as P
from splitrl.runtime.estimate import LinkEstimator
from splitrl.runtime.split_model import CloudSession, EdgeSession, Plan, SplitModel

log = logging.getLogger("splitrl.edge")


@dataclasses.dataclass(frozen=True)
class Request:
    rid: int
    prompt: tuple[int, ...]
    max_new: int


@dataclasses.dataclass
class Result:
    rid: int
    status: str                     # "ok" | "failed"
    tokens: list[int]
    plan: Plan | None
    retries: int = 0                # failed attempts that were retried
    fell_back: str = ""             # "" | "endpoint" (another cloud) | "edge" (ran the rest locally)
    latency_s: float = 0.0          # to the last token (the answer); CLOSE's round trip is bookkeeping
    total_s: float = 0.0            # including CLOSE
    answered_at: float = 0.0

    def add(self, tok: int) -> None:
        self.tokens.append(tok)
        self.answered_at = time.perf_counter()
    bytes_up: int = 0
    bytes_down: int = 0
    error: str = ""
    cloud_s: float = 0.0            # the cloud's compute for this request, as its TOKEN frames report it
    cloud_wait_s: float = 0.0       # seconds its forwards waited for the cloud's model (other requests held it)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3               # tries per endpoint before moving on
    base_s: float = 0.05            # first backoff
    factor: float = 2.0
    cap_s: float = 1.0
    jitter: float = 0.5             # backoff *= 1 + jitter * U(-1, 1)

    def backoff(self, k: int, rng: random.Random) -> float:
        return min(self.cap_s, self.base_s * self.factor**k) * (1.0 + self.jitter * rng.uniform(-1.0, 1.0))


class Unreachable(Exception):
    pass


# what a cloud refuses the request itself for (serve.py, validate.py): retrying that endpoint is futile
REFUSALS = {"busy", "draining", "answered", "ttl", "limit", "plan", "tokens"}


class RemoteError(P.FrameError):
    """An ERROR frame from the cloud; `remote_reason` is the cloud's one-word reason."""

    def __init__(self, text: str):
        super().__init__("remote", f"the cloud says: {text}")
        self.remote_reason = text.split(":", 1)[0].strip()


class RemoteLink:
    """One connection to one cloud endpoint (reconnected lazily)."""

    def __init__(self, host: str, port: int, token: bytes | None, timeout: float, est: LinkEstimator,
                 max_payload: int = P.DEFAULT_MAX_PAYLOAD):
        self.host, self.port, self.token, self.timeout, self.est = host, port, token, timeout, est
        self.max_payload = max_payload
        self.sock: socket.socket | None = None
        self.bytes_up = self.bytes_down = 0
        self.cloud_s = self.cloud_wait_s = 0.0     # what the cloud reported in its TOKEN frames, summed

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self) -> None:
        if self.sock is not None:
            return
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            auth.client_handshake(sock, self.token, self.timeout)
            t0 = time.perf_counter()
            self._send_on(sock, P.Frame(P.Kind.PING))
            pong = P.read_frame(sock, self.timeout, self.max_payload)
            if pong.kind != P.Kind.PONG:
                raise P.FrameError("unexpected", f"expected PONG, got {pong.kind.name}")
            self.est.rtt_sample(time.perf_counter() - t0)
            pong_vals = pong.array().reshape(-1).tolist() if pong.payload and pong.dtype == P.DType.I64 else []
            if pong_vals[:1] == [0]:
                raise P.FrameError("unready", f"{self.name} is not ready (draining, or no request slot free)")
            if len(pong_vals) >= 3:                  # an older cloud publishes no wait
                self.est.cloud_wait = max(pong_vals[2], 0) / 1e6
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _send_on(self, sock, frame: P.Frame) -> None:
        self.bytes_up += P.write_frame(sock, frame, self.timeout)

    def send(self, frame: P.Frame) -> None:
        self._send_on(self.sock, frame)

    def read(self) -> P.Frame:
        f = P.read_frame(self.sock, self.timeout, self.max_payload)
        self.bytes_down += P.HEADER.size + len(f.payload)
        if f.kind == P.Kind.ERROR:
            raise RemoteError(f.text())
        return f

    def read_token(self, f: P.Frame) -> tuple[int, float]:
        """A TOKEN frame's token and the cloud's seconds for it (compute + wait for the model), counted."""
        vals = f.array().reshape(-1).tolist()
        cloud_s, wait = vals[1], (vals[3] if len(vals) > 3 else 0.0)     # an older cloud reports no wait
        self.cloud_s += cloud_s
        self.cloud_wait_s += wait
        return int(vals[0]), cloud_s + wait

    def expect(self, rid: int, seq: int, *kinds) -> P.Frame:
        f = self.read()
        if f.kind not in kinds or f.request_id != rid or f.seq != seq:
            raise P.FrameError("unexpected", f"got {f.kind.name} rid {f.request_id} seq {f.seq}, expected "
                               f"{[k.name for k in kinds]} rid {rid} seq {seq}")
        return f

    def open(self, rid: int, plan: Plan, max_new: int) -> None:
        self.connect()
        self.send(P.array_frame(P.Kind.OPEN, plan.to_ints() + [max_new], rid))
        self.expect(rid, 0, P.Kind.OK)

    def replay(self, rid: int, plan: Plan, history: list[dict[str, bytes]], d: int) -> None:
        if not history:
            return
        n = sum(len(step["h"]) for step in history) // wire.row_bytes(d, plan.fmt)
        for name in history[0]:
            payload = b"".join(step[name] for step in history)
            self.send(P.Frame(P.UP_KINDS[name], rid, P.REPLAY, P.ACT_DTYPES[plan.fmt], (1, n, d), payload))
        self.send(P.Frame(P.Kind.REPLAY_END, rid, len(history)))
        self.expect(rid, len(history), P.Kind.OK)

    def step(self, rid: int, seq: int, plan: Plan, pending: dict[str, bytes], n_tok: int, d: int,
             edge: EdgeSession) -> tuple[int, dict[str, bytes]]:
        """Send a step's uplink, serve a DOWN_H1 if the plan needs it, return (token, extra uplink)."""
        t0 = time.perf_counter()
        sent = 0
        for name in plan.up_names(0):
            self.send(P.Frame(P.UP_KINDS[name], rid, seq, P.ACT_DTYPES[plan.fmt], (1, n_tok, d), pending[name]))
            sent += len(pending[name])
        extra: dict[str, bytes] = {}
        crossings = 2
        while True:
            f = self.expect(rid, seq, P.Kind.TOKEN, P.Kind.DOWN_H1)
            if f.kind == P.Kind.TOKEN:
                tok, cloud_s = self.read_token(f)
                self.est.transfer(sent, time.perf_counter() - t0 - cloud_s, crossings)
                return tok, extra
            sent += len(f.payload)
            pf = edge.down(f.activation())["pf"]
            extra["pf"] = wire.encode(pf, plan.fmt)
            self.send(P.Frame(P.Kind.UP_PF, rid, seq, P.ACT_DTYPES[plan.fmt], (1, n_tok, d), extra["pf"]))
            sent += len(extra["pf"])
            crossings += 2

    def close_request(self, rid: int) -> None:
        self.send(P.Frame(P.Kind.CLOSE, rid))
        self.expect(rid, 0, P.Kind.OK)

    def turn(self, rid: int, conv: int, ctx: int, plan: Plan, max_new: int) -> None:
        """OPEN for a turn of conversation `conv` whose caches hold `ctx` positions (0: a fresh chat)."""
        self.connect()
        self.send(P.array_frame(P.Kind.TURN, [conv, ctx, *plan.to_ints(), max_new], rid, 0, P.DType.I64))
        self.expect(rid, 0, P.Kind.OK)

    def cloud_only(self, rid: int, plan: Plan, ids: list[int], seq0: int, n: int, eos: int | None,
                   on_token: Callable[[int], None], opener: Callable | None = None) -> None:
        """A cloud-only request: open it (`opener(link, rid, plan, n)`, default OPEN), send the ids, stream."""
        (opener or RemoteLink.open)(self, rid, plan, n)
        self.send(P.array_frame(P.Kind.IDS, ids, rid, seq0))
        for s in range(n):
            tok, _ = self.read_token(self.expect(rid, seq0 + s, P.Kind.TOKEN))
            on_token(tok)
            if eos is not None and tok == eos:
                return


class EdgeClient:
    """Runs requests split with one or more cloud endpoints; counts what happened."""

    def __init__(self, sm: SplitModel, endpoints: Sequence[tuple[str, int]], token: bytes | None = None,
                 policy: Callable[[Request, LinkEstimator], Plan] | None = None, retry: RetryPolicy = RetryPolicy(),
                 timeout: float = 10.0, fallback: str = "edge", eos: int | None = None, seed: int = 0):
        if fallback not in ("edge", "none"):
            raise ValueError(f"fallback = {fallback!r}: must be 'edge' or 'none'")
        self.sm, self.retry, self.fallback, self.eos = sm, retry, fallback, eos
        self.est = LinkEstimator()
        self.links = [RemoteLink(h, p, token, timeout, self.est) for h, p in endpoints]
        self.policy = policy
        self.rng = random.Random(seed)
        self._wire_ids = random.SystemRandom()
        self.own_rids = itertools.count(-1, -1)   # ids of requests the client makes itself (a chat's restarts)
        self.results: dict[int, Result] = {}
        self.counts: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()

    def close(self) -> None:
        for link in self.links:
            link.close()

    # ---- driver ----
    def run(self, requests: Sequence[Request], plan: Plan | None = None) -> list[Result]:
        return [self.generate(r, plan) for r in requests]

    def generate(self, req: Request, plan: Plan | None = None, chat=None) -> Result:
        """Answer one request (with retries, other endpoints, then the edge's fallback). `chat`
        (splitrl.runtime.chat.EdgeChat) makes it a fresh turn of a conversation whose caches both sides keep."""
        if req.rid in self.results:
            raise ValueError(f"request {req.rid} was already answered: request ids must be unique")
        plan = plan or self.policy(req, self.est)
        t0 = time.perf_counter()
        counters = ("bytes_up", "bytes_down", "cloud_s", "cloud_wait_s")
        before = {c: sum(getattr(lk, c) for lk in self.links) for c in counters}
        res = Result(req.rid, "ok", [], plan)
        wire_req = dataclasses.replace(req, rid=self._wire_ids.getrandbits(64))   # unique on the cloud
        try:
            if plan.mode == "cloud_only":
                self._cloud_only(wire_req, plan, res, chat)
            else:
                self._split(wire_req, plan, res, chat)
        except Unreachable as e:
            res.status, res.error = "failed", str(e)
        res.total_s = time.perf_counter() - t0
        res.latency_s = res.answered_at - t0 if res.tokens else res.total_s
        for c in counters:
            setattr(res, c, sum(getattr(lk, c) for lk in self.links) - before[c])
        self.results[req.rid] = res
        self.counts["submitted"] += 1
        self.counts["completed" if res.status == "ok" else "failed"] += 1
        self.counts["retried"] += res.retries > 0
        if res.fell_back:
            self.counts[f"fallback_{res.fell_back}"] += 1
        return res

    def summary(self) -> dict[str, int]:
        c = dict(self.counts)
        c["lost"] = c.get("submitted", 0) - c.get("completed", 0) - c.get("failed", 0)
        return c

    # ---- retries ----
    def _with_retries(self, res: Result, state: dict, attempt_fn: Callable[[RemoteLink], object],
                      local_fn: Callable[[], object]):
        """Run attempt_fn on the current endpoint, retrying with backoff; then the next endpoint; then
        local_fn (edge fallback) or Unreachable."""
        while state["endpoint"] < len(self.links):
            link = self.links[state["endpoint"]]
            try:
                return attempt_fn(link)
            except (P.FrameError, OSError) as e:
                link.close()
                state["fresh"] = True
                reason = e.reason if isinstance(e, P.FrameError) else type(e).__name__
                self.errors[reason] += 1
                state["failures"] += 1
                log.info("request %d: attempt on %s failed (%s)", res.rid, link.name, e)
                if reason == "unready" or getattr(e, "remote_reason", "") in REFUSALS:
                    state["failures"] = self.retry.attempts      # this endpoint will not take it: move on
                if state["failures"] >= self.retry.attempts:
                    state["endpoint"] += 1
                    state["failures"] = 0
                    if state["endpoint"] < len(self.links):
                        res.fell_back = "endpoint"
                        res.retries += 1
                        continue
                    break
                res.retries += 1
                time.sleep(max(0.0, self.retry.backoff(state["failures"] - 1, self.rng)))
        if self.fallback == "edge":
            res.fell_back = "edge"
            return local_fn()
        raise Unreachable(f"request {res.rid}: no cloud endpoint answered after {self.retry.attempts} attempts each "
                          f"({dict(self.errors)})")

    # ---- split requests ----
    def _split(self, req: Request, plan: Plan, res: Result, chat=None) -> None:
        sm, d = self.sm, self.sm.d_model
        edge = EdgeSession(sm, plan, record=chat is not None)
        history: list[dict[str, bytes]] = []      # the partition checkpoint: every step's uplink bytes
        state = {"endpoint": 0, "failures": 0, "fresh": True, "local": None}
        ids = list(req.prompt)
        for seq in range(req.max_new):
            up = edge.up(ids)
            if "token" in up:                      # edge-only
                tok = int(up["token"][0])
            else:
                pending = {k: wire.encode(v, plan.fmt) for k, v in up.items()}
                n_tok = len(ids)

                def attempt(link, seq=seq, pending=pending, n_tok=n_tok):
                    if state["fresh"]:
                        if chat is None:
                            link.open(req.rid, plan, req.max_new)
                        else:
                            link.turn(req.rid, chat.wire_id, 0, plan, req.max_new)
                        link.replay(req.rid, plan, history, d)
                        state["fresh"] = False
                    return link.step(req.rid, seq, plan, pending, n_tok, d, edge)

                def local(pending=pending, n_tok=n_tok):
                    return self._local_step(state, plan, history, pending, n_tok, edge)
                tok, extra = (local() if state["local"] is not None else
                              self._with_retries(res, state, attempt, local))
                history.append({**pending, **extra})
            res.add(tok)
            if self.eos is not None and tok == self.eos:
                break
            ids = [tok]
        kept = False
        if state["local"] is None and not state["fresh"] and plan.mode == "split":
            try:
                self.links[state["endpoint"]].close_request(req.rid)
                kept = True
            except (P.FrameError, OSError) as e:   # the answer is complete; the cloud forgets it later
                self.links[state["endpoint"]].close()
                self.errors[f"close/{getattr(e, 'reason', type(e).__name__)}"] += 1
        if chat is not None:
            chat.started(edge, state["endpoint"] if kept or plan.mode == "edge_only" else None)

    def _local_step(self, state, plan: Plan, history, pending, n_tok: int, edge: EdgeSession):
        """The cloud's share run on the edge, rebuilt from the checkpoint on first use; the crossings
        still go through the wire format so the tokens are those the cloud would have produced."""
        d = self.sm.d_model
        if state["local"] is None:
            state["local"] = CloudSession(self.sm, plan)
            if history:
                n = sum(len(s["h"]) for s in history) // wire.row_bytes(d, plan.fmt)
                merged = {k: wire.decode(b"".join(s[k] for s in history), plan.fmt, (1, n, d)) for k in history[0]}
                state["local"].step(merged)
        up = {k: wire.decode(v, plan.fmt, (1, n_tok, d)) for k, v in pending.items()}
        extra: dict[str, bytes] = {}

        def send_down(name, h1):
            state["h1"] = wire.roundtrip(h1, plan.fmt)

        def receive_up():
            extra["pf"] = wire.encode(edge.down(state["h1"])["pf"], plan.fmt)
            return {"pf": wire.decode(extra["pf"], plan.fmt, (1, n_tok, d))}
        tok = state["local"].step(up, send_down, receive_up)
        return tok, extra

    # ---- cloud-only requests ----
    def _cloud_only(self, req: Request, plan: Plan, res: Result, chat=None) -> None:
        state = {"endpoint": 0, "failures": 0, "fresh": True, "local": None}
        opener = None if chat is None else (lambda link, rid, plan, n: link.turn(rid, chat.wire_id, 0, plan, n))

        def attempt(link):
            link.cloud_only(req.rid, plan, list(req.prompt) + res.tokens, len(res.tokens),
                            req.max_new - len(res.tokens), self.eos, res.add, opener)
            link.close_request(req.rid)
            return True

        def local():
            cloud = CloudSession(self.sm, plan)
            ids = list(req.prompt) + res.tokens
            while len(res.tokens) < req.max_new and not (self.eos is not None and res.tokens
                                                         and res.tokens[-1] == self.eos):
                res.add(cloud.step({"ids": torch.as_tensor(ids)}))
                ids = [res.tokens[-1]]
            return False
        kept = self._with_retries(res, state, attempt, local)
        if chat is not None:
            edge = EdgeSession(self.sm, plan, record=True)
            edge.pos = len(req.prompt) + len(res.tokens) - 1     # the cloud fed every token but the last
            chat.started(edge, state["endpoint"] if kept else None)


def main(argv: list[str] | None = None) -> int:
    """The command line (splitrl/cli.py points here; `python -m splitrl.runtime.edge_cli` runs it too)."""
    from splitrl.runtime.edge_cli import main as cli_main
    return cli_main(argv)
