"""One connection to the cloud: handshake, then requests one after another, each owned by it.

    OPEN(rid, plan ints + [max_new])                  -> OK     (frees this connection's previous request)
    [UP_* frames with seq REPLAY ..., REPLAY_END(n)]  -> OK(n)  (rebuild from the edge's checkpoint)
    split:      per step s: UP_* (seq s) [-> DOWN_H1(s), UP_PF(s)] -> TOKEN(s)
    cloud-only: IDS(prompt + tokens so far) -> TOKEN(s) ... (max_new tokens, streamed; EOS ends)
    CLOSE(rid)                                        -> OK     (the id is remembered as answered)
    PING                                              -> PONG [ready, free request slots, estimated wait µs]

Conversations (splitrl/runtime/conversation.py): the caches of a chat are kept between its turns.

    MIGRATE(conv, [positions, how, old plan, new plan]) -> the caches that change side cross (KV_MOVE per
                                                           moving layer, or HID_MOVE runs + MOVED) -> OK
    TURN(rid, [conv, positions, plan ints, max_new])  -> OK     (OPEN of one turn: positions = 0 starts the
                                                               chat afresh; else the kept caches resume)
    ... the turn's steps as a request's ...; CLOSE keeps the chat's caches instead of freeing them
    FORGET(conv)                                      -> OK

A chat the cloud does not hold as the edge expects (expired, evicted, lost with a connection) is
answered ERROR "lost"; the edge then rebuilds it from its tokens (nothing is answered twice or lost).

A request's session (its KV caches) belongs to the connection: it is freed on CLOSE, on the next
OPEN, when the request outlives the session TTL, and when the connection ends for any reason. Every
stage has a deadline: the handshake, each frame read, and each step (the wait for the model plus the
compute, checked between layers, which also stop when the peer has hung up). The model is not held
while waiting for the edge. Any FrameError is answered with an ERROR frame naming the reason and ends
the connection (the byte stream cannot be trusted any more); the server keeps serving everyone else.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import time

from splitrl.runtime import auth
from splitrl.runtime import conversation as C
from splitrl.runtime import protocol as P
from splitrl.runtime import validate as V
from splitrl.runtime.split_model import CloudSession

log = logging.getLogger("splitrl.cloud")
QUIET = ("timeout", "closed", "reset")


class Cancelled(P.FrameError):
    """A step stopped between layers (deadline, peer gone, server stopped)."""


class StepClock:
    """A step's deadline; time spent waiting for the edge does not count against it."""

    def __init__(self, seconds: float):
        self.seconds, self.deadline, self.waited = seconds, time.monotonic() + seconds, 0.0
        self.model_wait = 0.0       # seconds spent waiting for the model (another request held it)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def pause(self, seconds: float) -> None:
        self.deadline += seconds
        self.waited += seconds


def peer_gone(sock: socket.socket) -> bool:
    """True when the peer has closed or reset the connection (a readable socket with no data)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class Connection:
    def __init__(self, server, sock: socket.socket, peer, cid: int):
        self.server, self.sock, self.peer, self.cid = server, sock, peer, cid
        self.sm, self.limits = server.sm, server.limits
        self.max_pos = V.max_positions(server.sm, server.limits)
        self.session: CloudSession | None = None
        self.conv: int | None = None       # the conversation this request is a turn of
        self.rid = self.max_new = 0
        self.generated = False
        self.expires = 0.0

    # ---- the connection's life ----
    def run(self) -> None:
        try:
            auth.server_handshake(self.sock, self.server.token, self.limits.handshake_s,
                                  admit=lambda: self.server.promote(self))
            while not (self.server.stopping or (self.server.draining and self.session is None)):
                try:
                    frame = self._read()
                except P.ConnectionClosed:
                    return
                self._dispatch(frame)
        except P.FrameError as e:
            self._reject(e)
        except OSError as e:
            self.server.count("rejected/oserror")
            log.info("%s: connection from %s failed: %s", self.server.name, self.peer, e)
        except Exception as e:  # noqa: BLE001 - a bug in one request must not take the server down
            self.server.count("rejected/internal")
            log.exception("%s: internal error serving %s: %s", self.server.name, self.peer, e)
            self._send_error(f"internal: {type(e).__name__}: {e}")
        finally:
            self._free()
            self.server.forget(self)
            self.sock.close()

    def _reject(self, e: P.FrameError) -> None:
        if e.reason in QUIET and self.server.stopping:
            return
        self.server.count(f"rejected/{e.reason}")
        level = logging.INFO if e.reason in QUIET else logging.WARNING
        log.log(level, "%s: %s from %s (%s); dropping the connection", self.server.name,
                "gave up a request" if isinstance(e, Cancelled) else "rejected a frame", self.peer, e)
        self._send_error(str(e))

    def _send_error(self, text: str) -> None:
        try:
            P.write_frame(self.sock, P.text_frame(P.Kind.ERROR, text, self.rid), 1.0)
        except (P.FrameError, OSError):
            pass

    def _read(self) -> P.Frame:
        return P.read_frame(self.sock, self.limits.read_s, self.limits.max_payload)

    def _write(self, frame: P.Frame) -> None:
        P.write_frame(self.sock, frame, self.limits.read_s)

    def _free(self) -> None:
        if self.session is not None:
            self.session = self.conv = None        # a turn cut short loses its chat: the edge rebuilds it
            self.server.free_session(self)

    # ---- requests ----
    def _dispatch(self, f: P.Frame) -> None:
        if f.kind == P.Kind.PING:
            r = self.server.readiness()     # this connection has its slot: can it open a request?
            ready = not (r["draining"] or self.server.stopping) and r["free_sessions"] > 0
            wait_us = round(r["est_wait_s"] * 1e6)   # an older edge reads only the first entry
            self._write(P.array_frame(P.Kind.PONG, [int(ready), r["free_sessions"], wait_us], f.request_id, f.seq,
                                      P.DType.I64))
        elif f.kind == P.Kind.OPEN:
            self._open(f)
        elif f.kind == P.Kind.CLOSE:
            self._request(f)
            self.server.answered(f.request_id)
            if self.conv is not None:
                self.server.keep_conversation(self.conv, self.session)
            self._write(P.Frame(P.Kind.OK, f.request_id, f.seq))
            self._free()              # after the OK: a drain waits for it
        elif f.kind == P.Kind.TURN:
            self._open(f)
        elif f.kind == P.Kind.MIGRATE:
            self._migrate(f)
        elif f.kind == P.Kind.FORGET:
            self.server.forget_conversation(f.request_id)
            self._write(P.Frame(P.Kind.OK, f.request_id))
        elif f.kind == P.Kind.IDS:
            self._generate(f)
        elif f.kind in P.UP_NAMES:
            self._step(f)
        else:
            raise P.FrameError("unexpected", f"{f.kind.name} outside a request")

    def _request(self, f: P.Frame) -> None:
        """The frame belongs to this connection's open request, which is within its TTL."""
        if self.session is None or f.request_id != self.rid:
            raise P.FrameError("unexpected", f"{f.kind.name} for request {f.request_id}, but the open request on "
                                             f"this connection is {self.rid if self.session else 'none'}")
        if time.monotonic() > self.expires:
            raise P.FrameError("ttl", f"request {self.rid} outlived the session TTL of {self.limits.session_ttl_s} s")

    def _open(self, f: P.Frame) -> None:
        """OPEN a request, or TURN: open a turn of a conversation (its kept caches at `ctx` positions)."""
        conv = None
        if f.kind == P.Kind.TURN:
            conv, ctx, plan, max_new = V.turn_request(f, self.sm, self.limits)
        else:
            plan, max_new = V.open_request(f, self.sm, self.limits)
        self._free()
        if conv is None or ctx == 0:
            session = CloudSession(self.sm, plan, record=conv is not None)
        else:
            session = self.server.take_conversation(conv, ctx, plan)
            if session is None:
                raise P.FrameError("lost", f"conversation {conv} is not held here at {ctx} positions as this plan "
                                           "places it (expired, evicted or lost): rebuild it from its tokens")
            session.plan, session.pos = plan, ctx
        self.server.claim_session(self, f.request_id)      # refuses answered ids, a full or draining server
        self.session, self.rid, self.max_new, self.generated, self.conv = session, f.request_id, max_new, False, conv
        self.expires = time.monotonic() + self.limits.session_ttl_s
        self.server.count("opened")
        self._write(P.Frame(P.Kind.OK, self.rid))

    def _generate(self, f: P.Frame) -> None:
        """Cloud-only: stream max_new tokens after the ids (EOS ends early)."""
        self._request(f)
        if self.session.plan.mode != "cloud_only" or self.generated:
            raise P.FrameError("unexpected", f"IDS for request {self.rid}, which is not a fresh cloud-only request")
        self.generated = True
        ids = V.token_ids(f, self.sm, self.limits, room=self.max_pos - self.session.pos - self.max_new)
        session = self.session
        for s in range(self.max_new):
            self._request(f)
            tok, seconds, wait = self._compute(lambda check, ids=ids: session.step({"ids": ids}, check=check))
            self._token(s + f.seq, tok, seconds, wait)
            if self.server.eos is not None and tok == self.server.eos:
                break
            ids = ids.new_tensor([tok])

    def _step(self, f: P.Frame) -> None:
        """Split: gather the step's uplink frames, compute, answer TOKEN (or OK after a replay)."""
        self._request(f)
        plan, session, seq = self.session.plan, self.session, f.seq
        if plan.mode != "split":
            raise P.FrameError("unexpected", f"{f.kind.name} for request {self.rid}, which is cloud-only (send IDS)")
        replay = seq == P.REPLAY
        if not replay and seq >= self.max_new:
            raise P.FrameError("limit", f"step {seq} of a request opened with max_new = {self.max_new}")
        want = plan.up_names(0) + (plan.up_names(1) if replay else ())
        room = self.max_pos - session.pos
        max_rows = room if replay else self.limits.max_rows     # a replay is every earlier step at once
        up: dict = {}
        g = f
        while True:
            name = P.UP_NAMES.get(g.kind)
            if name not in want or name in up or g.request_id != self.rid or g.seq != seq:
                raise P.FrameError("unexpected", f"{g.kind.name} rid {g.request_id} seq {g.seq} inside step {seq} "
                                                 f"of request {self.rid} (expected {list(want)})")
            x = V.activation(g, self.sm, plan.fmt, next(iter(up.values())).shape[1] if up else None, room, max_rows)
            up[name] = x
            if len(up) == len(want):
                break
            g = self._read()
        if replay:
            end = self._read()
            if end.kind != P.Kind.REPLAY_END or end.request_id != self.rid:
                raise P.FrameError("unexpected", f"{end.kind.name} where REPLAY_END of request {self.rid} belongs")
            self._compute(lambda check: session.step(up, check=check))
            self.server.count("replays")
            self._write(P.array_frame(P.Kind.OK, [session.pos], self.rid, end.seq, P.DType.I64))
            return
        rows = next(iter(up.values())).shape[1]
        tok, seconds, wait = self._compute(lambda check, clock: session.step(
            up, lambda name, h1: self._send_down(h1, seq, clock), lambda: self._receive_pf(seq, rows, clock), check),
            with_clock=True)
        self._token(seq, tok, seconds, wait)

    def _send_down(self, h1, seq: int, clock: StepClock) -> None:
        with self._model_released(clock):
            self._write(P.activation_frame(P.Kind.DOWN_H1, h1, self.session.plan.fmt, self.rid, seq))

    def _receive_pf(self, seq: int, rows: int, clock: StepClock) -> dict:
        with self._model_released(clock):
            g = self._read()
        if g.kind != P.Kind.UP_PF or g.request_id != self.rid or g.seq != seq:
            raise P.FrameError("unexpected", f"{g.kind.name} rid {g.request_id} seq {g.seq} where UP_PF of step {seq} "
                                             "belongs")
        return {"pf": V.activation(g, self.sm, self.session.plan.fmt, rows, rows, rows)}

    # ---- the model, with deadlines ----
    def _compute(self, fn, with_clock: bool = False):
        """Run fn(check[, clock]) holding the model, within the step deadline: (result, compute seconds,
        seconds waited for the model)."""
        clock = StepClock(self.limits.step_s)
        lock = self.server.compute_lock
        t0 = time.perf_counter()
        if not self.server.acquire_model(max(clock.left(), 0.0)):
            raise P.FrameError("busy", f"the model stayed busy for the whole step deadline ({clock.seconds} s)")
        self._holding = True
        clock.model_wait += time.perf_counter() - t0
        try:
            def check():
                if self.server.stopping:
                    raise Cancelled("cancelled", "the server is stopping")
                if clock.left() < 0:
                    raise Cancelled("deadline", f"step of request {self.rid} ran past its {clock.seconds} s deadline")
                if peer_gone(self.sock):
                    raise Cancelled("cancelled", f"the peer hung up during a step of request {self.rid}")
            out = fn(check, clock) if with_clock else fn(check)
        except Cancelled:
            self._free()                 # a half-computed step leaves the caches unusable
            raise
        finally:
            if self._holding:
                lock.release()
        self.server.count("steps")
        seconds = time.perf_counter() - t0 - clock.waited - clock.model_wait     # the forward itself
        self.server.forward_done(seconds)
        return out, seconds, clock.model_wait

    _holding = True

    @contextlib.contextmanager
    def _model_released(self, clock: StepClock):
        """Let other requests use the model while this one waits on the network."""
        lock = self.server.compute_lock
        t0 = time.monotonic()
        lock.release()
        self._holding = False
        try:
            yield
        finally:
            clock.pause(time.monotonic() - t0)
            t_wait = time.monotonic()
            if not self.server.acquire_model(max(clock.left(), 0.0)):
                raise P.FrameError("busy", f"the model stayed busy for the whole step deadline ({clock.seconds} s)")
            self._holding = True
            clock.model_wait += time.monotonic() - t_wait

    def _token(self, seq: int, tok: int, seconds: float, wait: float) -> None:
        self.server.count("tokens")
        load = self.server.load()
        self._write(P.array_frame(P.Kind.TOKEN, [tok, seconds, load, wait], self.rid, seq, P.DType.F64))

    # ---- conversations: moving a chat's caches between turns ----
    def _migrate(self, f: P.Frame) -> None:
        """Move the caches of conversation f.request_id from the old plan's placement to the new one's,
        as the edge chose (K/V, or hidden states and a recompute on the side that receives them)."""
        conv = f.request_id
        ctx, how, old, new = V.migrate_request(f, self.sm, self.limits)
        if self.session is not None:
            raise P.FrameError("unexpected", f"MIGRATE inside request {self.rid}: close it first")
        session = self.server.take_conversation(conv, ctx, old)
        if session is None:
            if old.mode != "edge_only":
                raise P.FrameError("lost", f"conversation {conv} is not held here at {ctx} positions as its last plan "
                                           "placed it: rebuild it from its tokens")
            session = CloudSession(self.sm, old, record=True)      # every cache was on the edge so far
        C.move_over_link(session, False, C.moves(old, new), how, ctx, new.fmt, conv, self._write, self._read,
                         lambda fn: self._compute(lambda check: fn()))
        session.plan = new
        self.server.keep_conversation(conv, session)
        self.server.count("migrations")
        self._write(P.Frame(P.Kind.OK, conv))
