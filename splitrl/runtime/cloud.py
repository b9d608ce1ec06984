"""`splitrl-cloud`: the cloud half of split inference, a threaded TCP server no single client can stall.

Admission: a connection first gets a handshake slot (at most `max_unauth`; a new one evicts the
oldest, so idle or slow handshakes cannot lock real clients out), then, once authenticated, a
connection slot (at most `max_conns`; one more is told "busy"). Both caps are shrunk at start-up to
fit the process's descriptor limit, and an accept error (out of descriptors, say) is logged and
backed off, never fatal. Requests are served by `serve.Connection` (one thread per admitted
connection); at most `max_sessions` hold KV caches at once.

Health and drain, as inference servers offer them: `readiness()` (model loaded, not draining,
request and connection slots left) is what `/v2/health/ready` (health.py) and the PONG frame report,
with `estimated_wait()`, the seconds a forward arriving now waits for the model (what a fleet's load
balancer publishes; the policy's `cloud_wait` feature, docs/fleet.md);
`request_drain()` (SIGTERM) stops accepting, closes idle connections, refuses new requests, lets
in-flight requests finish for up to `drain_s`, then stops.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import socket
import threading
import time

from splitrl.runtime import auth
from splitrl.runtime import protocol as P
from splitrl.runtime.conversation import edge_attn_units
from splitrl.runtime.limits import Limits, fit_to_descriptors
from splitrl.runtime.serve import Connection
from splitrl.runtime.split_model import SplitModel

log = logging.getLogger("splitrl.cloud")
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class CloudServer:
    def __init__(self, sm: SplitModel, host: str = "127.0.0.1", port: int = 0, token: bytes | None = None, *,
                 insecure_no_auth: bool = False, limits: Limits | None = None, eos: int | None = None,
                 remember: int = 4096, name: str = "cloud", model_name: str = "",
                 listener: socket.socket | None = None):
        if token is not None and insecure_no_auth:
            raise auth.TokenError("CloudServer: give a token or insecure_no_auth=True, not both")
        if token is None and not insecure_no_auth:
            raise auth.TokenError(f"CloudServer: give a token of >= {auth.MIN_TOKEN_BYTES} bytes, or "
                                  "insecure_no_auth=True to let anyone who can connect use the model")
        self.token = None if token is None else auth.check_token(token, "CloudServer(token=...)")
        self.sm, self.limits, self.eos, self.name = sm, fit_to_descriptors(limits or Limits()), eos, name
        self.model_name = model_name or type(sm.model).__name__
        self.stats: collections.Counter = collections.Counter()
        self.lock = threading.RLock()          # wait_for predicates may call methods that take it
        self._changed = threading.Condition(self.lock)
        self.compute_lock = threading.Lock()      # one model, one forward at a time
        self._waiters = 0                         # forwards waiting for compute_lock
        self._step_s = 0.0                        # EWMA of a forward's compute seconds (0 until one ran)
        self._answered: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._remember = remember
        self._pending: dict[int, Connection] = {}     # in the handshake, oldest first
        self._conns: dict[int, Connection] = {}       # authenticated
        self._sessions: dict[int, int] = {}           # connection id -> its open request id
        # conversation id -> (its CloudSession, expiry): chats kept between turns, least recently used first
        self._conversations: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self._listener = listener or socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop, self._draining, self._drain_requested = threading.Event(), threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    # ---- state ----
    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def count(self, key: str) -> None:
        with self.lock:
            self.stats[key] += 1

    def session_count(self) -> int:
        with self.lock:
            return len(self._sessions)

    def wait_for(self, predicate, timeout: float) -> bool:
        """Wait until predicate(self) holds (re-checked whenever connections or sessions change)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def load(self) -> float:
        with self.lock:
            return min(1.0, len(self._sessions) / self.limits.max_sessions)

    # ---- the model and its published wait ----
    def acquire_model(self, timeout: float) -> bool:
        """Take the model (compute_lock) within `timeout`, counted as waiting meanwhile."""
        with self.lock:
            self._waiters += 1
        try:
            return self.compute_lock.acquire(timeout=timeout)
        finally:
            with self.lock:
                self._waiters -= 1

    def forward_done(self, seconds: float, alpha: float = 0.2) -> None:
        """Record a forward's compute seconds (EWMA: recent forwards predict the next ones)."""
        with self.lock:
            self._step_s = seconds if self._step_s == 0.0 else (1 - alpha) * self._step_s + alpha * seconds

    def estimated_wait(self) -> float:
        """Seconds a forward arriving now waits for the model: the forwards waiting ahead of it times the
        mean forward, plus one when the model is busy (the fleet model's W / C with one replica; the lock
        is not strictly FIFO, so this is the wait on average)."""
        with self.lock:
            ahead = self._waiters + int(self.compute_lock.locked())
            return ahead * self._step_s

    def readiness(self) -> dict:
        with self.lock:
            sessions, conns = len(self._sessions), len(self._conns)
        lim = self.limits
        reason = ("stopped" if self.stopping else "draining" if self.draining else
                  "no free request slot" if sessions >= lim.max_sessions else
                  "connection cap reached" if conns >= lim.max_conns else "")
        return {"ready": not reason, "reason": reason or "ok", "model": self.model_name, "auth": self.token is not None,
                "sessions": sessions, "max_sessions": lim.max_sessions, "free_sessions": max(lim.max_sessions - sessions, 0),
                "connections": conns, "max_connections": lim.max_conns, "draining": self.draining,
                "est_wait_s": self.estimated_wait()}

    # ---- called by connections ----
    def promote(self, conn: Connection) -> None:
        """A connection passed the handshake: give it a connection slot or refuse it ("busy")."""
        with self._changed:
            self._pending.pop(conn.cid, None)
            if len(self._conns) >= self.limits.max_conns:
                raise P.FrameError("busy", f"{len(self._conns)} connections in use (the cloud's --max-conns); "
                                           "try again later or another endpoint")
            self._conns[conn.cid] = conn
            self.stats["connections"] += 1
            self._changed.notify_all()

    def forget(self, conn: Connection) -> None:
        with self._changed:
            self._pending.pop(conn.cid, None)
            self._conns.pop(conn.cid, None)
            self._changed.notify_all()

    def claim_session(self, conn: Connection, rid: int) -> None:
        with self._changed:
            if self.draining:
                raise P.FrameError("draining", "the cloud is shutting down and takes no new requests")
            if rid in self._answered:
                self.stats["refused/answered"] += 1
                raise P.FrameError("answered", f"request {rid} was already answered")
            if len(self._sessions) >= self.limits.max_sessions:
                raise P.FrameError("busy", f"{len(self._sessions)} requests in flight (the cloud's --max-sessions)")
            self._sessions[conn.cid] = rid
            self._changed.notify_all()

    def free_session(self, conn: Connection) -> None:
        with self._changed:
            self._sessions.pop(conn.cid, None)
            self._changed.notify_all()

    def take_conversation(self, conv: int, ctx: int, plan):
        """The kept session of conversation `conv`, out of the table while a turn uses it, or None when
        the cloud does not hold it at `ctx` positions under `plan`'s placement (expired, evicted, lost
        with a connection, never made): the edge then rebuilds the chat from its tokens."""
        with self.lock:
            kept = self._conversations.pop(conv, None)
        if kept is None or kept[1] < time.monotonic():
            return None
        session = kept[0]
        for layer, cache in enumerate(session.caches):
            mine = tuple(u for u in range(self.sm.attn_units) if u not in edge_attn_units(plan, layer))
            if cache.units != mine or (mine and cache.length != ctx):
                return None
        return session

    def keep_conversation(self, conv: int, session) -> None:
        with self.lock:
            self._conversations[conv] = (session, time.monotonic() + self.limits.session_ttl_s)
            self._conversations.move_to_end(conv)
            while len(self._conversations) > self.limits.max_conversations:
                self._conversations.popitem(last=False)
                self.stats["conversations/evicted"] += 1

    def forget_conversation(self, conv: int) -> None:
        with self.lock:
            self._conversations.pop(conv, None)

    def answered(self, rid: int) -> None:
        with self.lock:
            self._answered[rid] = None
            while len(self._answered) > self._remember:
                self._answered.popitem(last=False)
            self.stats["closed"] += 1

    # ---- accepting ----
    def start(self) -> CloudServer:
        self._thread = threading.Thread(target=self.serve_forever, name=f"{self.name}-accept", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self, duration: float | None = None) -> None:
        """Accept until stopped, `duration` has passed, or a drain is requested (then drain)."""
        end = None if duration is None else time.monotonic() + duration
        mode = ("ON (HMAC-SHA256 over a shared token)" if self.token is not None else
                "OFF (--insecure-no-auth: anyone who can connect may use the model)")
        log.info("%s listening on %s:%d; auth %s; limits %s", self.name, self.host, self.port, mode, self.limits)
        backoff = 0.0
        while not (self._stop.is_set() or self._drain_requested.is_set()) and (end is None or time.monotonic() < end):
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set() or self._draining.is_set():
                    break
                backoff = min(1.0, max(0.01, 2 * backoff))
                self._accept_failed(e, backoff)
                self._stop.wait(backoff)
                continue
            backoff = 0.0
            self._admit(sock, peer)
        if self._drain_requested.is_set() and not self._stop.is_set():
            self.drain()

    def _accept_failed(self, e: OSError, backoff: float) -> None:
        with self.lock:
            self.stats["accept_errors"] += 1
            oldest = next(iter(self._pending.values()), None) if e.errno in OUT_OF_DESCRIPTORS else None
            if oldest is not None:
                self._pending.pop(oldest.cid)
                self.stats["evicted/handshake"] += 1
        if oldest is not None:        # free a descriptor for a client that will authenticate
            _shutdown(oldest.sock)
        what = "out of file descriptors (raise `ulimit -n`)" if e.errno in OUT_OF_DESCRIPTORS else "accept failed"
        log.warning("%s: %s: %s; backing off %.2f s%s", self.name, what, e, backoff,
                    ", dropped the oldest unauthenticated connection" if oldest is not None else "")

    def _admit(self, sock: socket.socket, peer) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.lock:
            evicted = None
            if len(self._pending) >= self.limits.max_unauth:
                evicted = self._pending.pop(next(iter(self._pending)))
                self.stats["evicted/handshake"] += 1
            conn = Connection(self, sock, peer, next(self._ids))
            self._pending[conn.cid] = conn
        if evicted is not None:
            _shutdown(evicted.sock)
        try:
            threading.Thread(target=conn.run, name=f"{self.name}-conn{conn.cid}", daemon=True).start()
        except RuntimeError as e:     # no thread to be had: refuse this one, keep serving
            log.warning("%s: cannot start a thread for %s (%s); dropping it", self.name, peer, e)
            self.forget(conn)
            sock.close()

    # ---- stopping ----
    def request_drain(self) -> None:
        """Ask for a graceful stop (safe from a signal handler: it only sets an event)."""
        self._drain_requested.set()

    def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting, close idle connections, refuse new requests, wait for in-flight ones (up to
        `timeout`, default limits.drain_s), then stop. True when every request finished."""
        timeout = self.limits.drain_s if timeout is None else timeout
        with self._changed:
            self._draining.set()
            self._changed.notify_all()
            idle = [c for c in (*self._pending.values(), *self._conns.values()) if c.cid not in self._sessions]
            in_flight = len(self._sessions)
        self._listener.close()
        for c in idle:
            _shutdown(c.sock)
        log.info("%s: draining: %d requests in flight, %d idle connections closed", self.name, in_flight, len(idle))
        finished = self.wait_for(lambda s: not s._sessions, timeout)
        self.stop()
        log.info("%s: drained (%s)", self.name, "every request finished" if finished else
                 f"stopped the rest after {timeout} s")
        return finished

    def stop(self) -> None:
        """Stop accepting, close every connection (their requests end, their sessions are freed)."""
        self._listener.close()
        with self._changed:
            self._stop.set()
            self._changed.notify_all()
            conns = [*self._pending.values(), *self._conns.values()]
        for c in conns:
            _shutdown(c.sock)
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def kill(self) -> None:
        """As if the process died: every connection reset (RST), every session gone."""
        with self.lock:
            conns = [*self._pending.values(), *self._conns.values()]
        for c in conns:
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        self.stop()


def _shutdown(sock: socket.socket) -> None:
    """Wake the connection's thread (its read ends); the thread itself closes the socket."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """The command line (splitrl/cli.py points here; `python -m splitrl.runtime.cloud_cli` runs it too)."""
    from splitrl.runtime.cloud_cli import main as cli_main
    return cli_main(argv)
