"""A frame-aware loopback TCP proxy that shapes the link and injects faults, for tests and `measure`.

    edge ──▶ LinkProxy(127.0.0.1:p) ──▶ cloud

Shaping (per direction, like one bottleneck queue): a frame of n bytes leaves `n / bandwidth` after
the link is free and arrives `rtt / 2` later; the bandwidth may follow a trace (bytes/s per
`trace_step_s`). Packet loss (`loss`, per direction) is a simplified TCP: the frame is cut into
segments of `mss` bytes, each lost with probability `loss`; a lost segment is re-sent one RTT later
when at least three later segments of the frame arrive (fast retransmit), otherwise after a tail-loss
probe of max(2 RTT, 10 ms); a re-sent segment lost again waits a retransmission timeout of
max(200 ms, 2 RTT). The frame arrives when its last segment does (in order, like TCP), and re-sent
bytes occupy the link. Faults are `Rule`s matched on (direction, frame kind, n-th occurrence overall):
drop the frame, corrupt one payload byte, reset both connections, delay it, or call a hook (e.g.
kill the cloud) and drop it. Every rule fires once and is counted in `fired`.
This is the user-space stand-in for `tc netem` where network namespaces are not permitted.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from splitrl.runtime import protocol as P

UP, DOWN = "up", "down"      # edge -> cloud, cloud -> edge
ACTIONS = ("drop", "corrupt", "reset", "delay", "call")


@dataclasses.dataclass
class Rule:
    direction: str               # "up" | "down"
    kind: P.Kind | None          # None: any frame
    nth: int                     # fire on the n-th matching frame (1-based, counted over all connections)
    action: str                  # one of ACTIONS
    delay_s: float = 0.0
    hook: Callable[[], None] | None = None
    seen: int = 0
    done: bool = False

    def __post_init__(self):
        if self.action not in ACTIONS or self.direction not in (UP, DOWN) or self.nth < 1:
            raise ValueError(f"bad rule {self}: action in {ACTIONS}, direction up/down, nth >= 1")


class LinkProxy:
    def __init__(self, upstream: tuple[str, int], rules: Sequence[Rule] = (), bandwidth: float | None = None,
                 rtt_s: float = 0.0, trace: Sequence[float] | None = None, trace_step_s: float = 1.0,
                 loss: float = 0.0, mss: int = 1448, seed: int = 0):
        if not 0.0 <= loss < 1.0 or mss < 1:
            raise ValueError(f"loss = {loss} must be in [0, 1) and mss = {mss} >= 1")
        self.upstream, self.rules = upstream, list(rules)
        self.bandwidth, self.rtt_s, self.trace, self.trace_step_s = bandwidth, rtt_s, trace, trace_step_s
        self.loss, self.mss, self._rng = loss, mss, np.random.default_rng(seed)
        self.lost_segments: collections.Counter = collections.Counter()
        self.fired: collections.Counter = collections.Counter()
        self.frames: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._free_at = {UP: 0.0, DOWN: 0.0}
        self._t0 = time.monotonic()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="link-proxy")
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for a, b in list(self._pairs):
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
        self._thread.join(timeout=2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def bandwidth_at(self, t: float) -> float | None:
        if self.trace is not None:
            return float(self.trace[int(t / self.trace_step_s) % len(self.trace)])
        return self.bandwidth

    # ---- plumbing ----
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=2.0)
            except OSError:
                client.close()     # the cloud is gone: the edge sees the connection close
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, UP), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, DOWN), daemon=True).start()

    @staticmethod
    def _recv(sock: socket.socket, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _match(self, direction: str, kind: int) -> Rule | None:
        with self._lock:
            for r in self.rules:
                if r.done or r.direction != direction or (r.kind is not None and r.kind != kind):
                    continue
                r.seen += 1
                if r.seen == r.nth:
                    r.done = True
                    self.fired[r.action] += 1
                    return r
        return None

    def _reset(self, a: socket.socket, b: socket.socket) -> None:
        for s in (a, b):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # RST, not FIN
                s.close()
            except OSError:
                pass

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        """Read frames as they come (so a frame's send time is its read time), apply the rules, and
        hand them to a writer that delivers each at its shaped arrival time."""
        out: queue.Queue = queue.Queue()
        writer = threading.Thread(target=self._deliver, args=(out, src, dst), daemon=True)
        writer.start()
        src.settimeout(None)
        while not self._stop.is_set():
            head = self._recv(src, P.HEADER.size)
            if head is None:
                break
            n = struct.unpack("!I", head[36:40])[0]
            payload = self._recv(src, n) if n else b""
            if payload is None:
                break
            kind = head[5]
            self.frames[(direction, kind)] += 1
            rule = self._match(direction, kind)
            data, extra = head + payload, 0.0
            if rule is not None:
                if rule.action == "drop":
                    continue
                if rule.action == "reset":
                    out.put(None)
                    writer.join(timeout=5)
                    self._reset(src, dst)
                    return
                if rule.action == "call":
                    rule.hook()
                    continue
                if rule.action == "corrupt":
                    i = len(data) - 1 if payload else 20
                    data = data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:]
                if rule.action == "delay":
                    extra = rule.delay_s
            out.put((self._arrival(direction, len(data)) + extra, data))
        out.put(None)

    def _deliver(self, out: queue.Queue, src: socket.socket, dst: socket.socket) -> None:
        while True:
            item = out.get()
            if item is None:
                break
            at, data = item
            wait = at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _arrival(self, direction: str, nbytes: int) -> float:
        """When a frame read now arrives: after the link is free, its serialisation time, the recovery
        of lost segments, and RTT/2."""
        now = time.monotonic()
        bw = self.bandwidth_at(now - self._t0)
        with self._lock:
            wait, resent = self._recovery(direction, nbytes)
            start = max(now, self._free_at[direction])
            done = start + ((nbytes + resent) / bw if bw else 0.0)
            self._free_at[direction] = done
        return done + wait + self.rtt_s / 2

    def _recovery(self, direction: str, nbytes: int) -> tuple[float, int]:
        """(seconds waiting for retransmissions, bytes re-sent) for one frame (see the module doc)."""
        if not self.loss:
            return 0.0, 0
        n = max(1, math.ceil(nbytes / self.mss))
        lost = np.flatnonzero(self._rng.random(n) < self.loss)
        if not lost.size:
            return 0.0, 0
        self.lost_segments[direction] += int(lost.size)
        fast = n - 1 - int(lost.max()) >= 3
        wait = self.rtt_s if fast else max(2 * self.rtt_s, 0.01)
        resent = int(lost.size)
        again = int((self._rng.random(lost.size) < self.loss).sum())
        while again:             # bounded: each round keeps a share `loss` < 1 of the last one
            self.lost_segments[direction] += again
            wait += max(0.2, 2 * self.rtt_s)
            resent += again
            again = int((self._rng.random(again) < self.loss).sum())
        return wait, resent * self.mss
