"""`splitrl-cloud`: the cloud half of split inference, a threaded TCP server.

Per connection: handshake (auth), then any number of requests, one after another:

    OPEN(rid, plan ints + [max_new])          -> OK          (replaces a session of that id: a retry)
    [UP_* frames with seq REPLAY ..., REPLAY_END(n)] -> OK(n)  (rebuild from the edge's checkpoint)
    split:      per step s: UP_* (seq s) [-> DOWN_H1(s), UP_PF(s)] -> TOKEN(s)
    cloud-only: IDS(prompt + tokens so far) -> TOKEN(s) ... (max_new tokens, streamed; EOS ends)
    CLOSE(rid)                                -> OK          (the id is remembered as answered)

A bad frame (FrameError) is logged with its reason and counted in `stats`, the peer gets an ERROR
frame when the socket still works, the connection is dropped (the byte stream cannot be trusted any
more), and the server keeps serving everyone else. Sessions live in memory and die with the process:
the edge's partition checkpoint is what makes that survivable.
"""

from __future__ import annotations

import argparse
import collections
import logging
import socket
import threading
import time

import torch

from splitrl.runtime import protocol as P
from splitrl.runtime.split_model import CloudSession, Plan, SplitModel

log = logging.getLogger("splitrl.cloud")


class CloudServer:
    def __init__(self, sm: SplitModel, host: str = "127.0.0.1", port: int = 0, token: bytes | None = None,
                 read_timeout: float = 30.0, max_payload: int = P.DEFAULT_MAX_PAYLOAD, eos: int | None = None,
                 remember: int = 4096, name: str = "cloud"):
        self.sm, self.token, self.read_timeout, self.max_payload = sm, token, read_timeout, max_payload
        self.eos, self.name = eos, name
        self.sessions: dict[int, CloudSession] = {}
        self.answered: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.remember = remember
        self.stats: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.compute_lock = threading.Lock()   # one model, one forward at a time
        self.busy = 0
        self._listener = socket.create_server((host, port))
        self._listener.settimeout(0.2)
        self.host, self.port = self._listener.getsockname()[:2]
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----
    def start(self) -> CloudServer:
        self._thread = threading.Thread(target=self.serve_forever, name=f"{self.name}-accept", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self, duration: float | None = None) -> None:
        end = None if duration is None else time.monotonic() + duration
        log.info("%s listening on %s:%d (auth %s)", self.name, self.host, self.port, "on" if self.token else "off")
        while not self._stop.is_set() and (end is None or time.monotonic() < end):
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with self.lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve_conn, args=(conn, peer), daemon=True).start()

    def stop(self) -> None:
        """Stop accepting, close every connection. Sessions are kept (a graceful stop)."""
        self._stop.set()
        self._listener.close()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        if self._thread:
            self._thread.join(timeout=2)

    def kill(self) -> None:
        """As if the process died: every connection reset, every session gone."""
        for c in list(self._conns):
            try:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        self.stop()
        with self.lock:
            self.sessions.clear()

    # ---- one connection ----
    def _serve_conn(self, conn: socket.socket, peer) -> None:
        try:
            P.server_handshake(conn, self.token, self.read_timeout)
            self.stats["connections"] += 1
            while not self._stop.is_set():
                try:
                    frame = P.read_frame(conn, self.read_timeout, self.max_payload)
                except P.ConnectionClosed:
                    return
                self._dispatch(conn, frame)
        except P.FrameError as e:
            self._reject(conn, peer, e)
        except OSError as e:
            self.stats["rejected/oserror"] += 1
            log.info("%s: connection from %s failed: %s", self.name, peer, e)
        except Exception as e:  # noqa: BLE001 - a bug in one request must not take the server down
            self.stats["rejected/internal"] += 1
            log.exception("%s: internal error serving %s: %s", self.name, peer, e)
            self._send_error(conn, f"internal error: {type(e).__name__}: {e}")
        finally:
            with self.lock:
                self._conns.discard(conn)
            conn.close()

    def _reject(self, conn, peer, e: P.FrameError) -> None:
        if e.reason in ("timeout", "closed", "reset") and self._stop.is_set():
            return
        self.stats[f"rejected/{e.reason}"] += 1
        level = logging.INFO if e.reason in ("closed", "reset") else logging.WARNING
        log.log(level, "%s: rejected a frame from %s (%s); dropping the connection", self.name, peer, e)
        self._send_error(conn, str(e))

    def _send_error(self, conn, text: str, rid: int = 0) -> None:
        try:
            P.write_frame(conn, P.text_frame(P.Kind.ERROR, text, rid), 1.0)
        except (P.FrameError, OSError):
            pass

    def _read(self, conn) -> P.Frame:
        return P.read_frame(conn, self.read_timeout, self.max_payload)

    def _dispatch(self, conn, f: P.Frame) -> None:
        if f.kind == P.Kind.PING:
            P.write_frame(conn, P.Frame(P.Kind.PONG, f.request_id, f.seq), self.read_timeout)
        elif f.kind == P.Kind.OPEN:
            self._open(conn, f)
        elif f.kind == P.Kind.CLOSE:
            with self.lock:
                self.sessions.pop(f.request_id, None)
                self.answered[f.request_id] = None
                while len(self.answered) > self.remember:
                    self.answered.popitem(last=False)
            self.stats["closed"] += 1
            P.write_frame(conn, P.Frame(P.Kind.OK, f.request_id, f.seq), self.read_timeout)
        else:
            raise P.FrameError("unexpected", f"{f.kind.name} outside a request")

    def _open(self, conn, f: P.Frame) -> None:
        rid = f.request_id
        if f.dtype != P.DType.I32:
            raise P.FrameError("shape", f"OPEN must carry i32 values, got {f.dtype.name}")
        values = f.array().reshape(-1).tolist()
        try:
            plan = Plan.from_ints(values[:-1], self.sm.n_layers, self.sm.attn_units, self.sm.n_units)
        except ValueError as e:
            raise P.FrameError("plan", str(e)) from e
        max_new = int(values[-1])
        if rid in self.answered:
            self.stats["refused/answered"] += 1
            self._send_error(conn, f"request {rid} was already answered", rid)
            return
        session = CloudSession(self.sm, plan)
        with self.lock:
            if rid in self.sessions:
                self.stats["reopened"] += 1
            self.sessions[rid] = session
        self.stats["opened"] += 1
        P.write_frame(conn, P.Frame(P.Kind.OK, rid), self.read_timeout)
        if plan.mode == "cloud_only":
            self._cloud_only(conn, rid, session, max_new)
        else:
            self._split(conn, rid, session, plan)

    def _expect(self, f: P.Frame, rid: int, kinds) -> None:
        if f.request_id != rid or f.kind not in kinds:
            raise P.FrameError("unexpected", f"{f.kind.name} for request {f.request_id} while serving {rid} "
                               f"(expected {[k.name for k in kinds]})")

    def _cloud_only(self, conn, rid: int, session: CloudSession, max_new: int) -> None:
        f = self._read(conn)
        self._expect(f, rid, (P.Kind.IDS,))
        ids = torch.as_tensor(f.array().reshape(-1).astype("int64"))
        for s in range(max_new):
            t0 = time.perf_counter()
            with self.compute_lock:
                tok = session.step({"ids": ids})
            self._token(conn, rid, s + f.seq, tok, time.perf_counter() - t0)
            if self.eos is not None and tok == self.eos:
                break
            ids = torch.tensor([tok])

    def _split(self, conn, rid: int, session: CloudSession, plan: Plan) -> None:
        names0 = plan.up_names(0)
        while True:
            f = self._read(conn)
            if f.kind == P.Kind.CLOSE and f.request_id == rid:
                self._dispatch(conn, f)
                return
            if f.kind == P.Kind.OPEN:        # the edge gave this request up here and starts another
                self._dispatch(conn, f)
                return
            self._expect(f, rid, tuple(P.UP_KINDS[n] for n in ("h", "pa", "pf")))
            seq = f.seq
            up = {P.UP_NAMES[f.kind]: f.activation()}
            want = names0 + (plan.up_names(1) if seq == P.REPLAY else ())
            while set(up) != set(want):
                g = self._read(conn)
                self._expect(g, rid, tuple(P.UP_KINDS[n] for n in want))
                if g.seq != seq:
                    raise P.FrameError("unexpected", f"seq {g.seq} inside step {seq}")
                up[P.UP_NAMES[g.kind]] = g.activation()
            if seq == P.REPLAY:
                g = self._read(conn)
                self._expect(g, rid, (P.Kind.REPLAY_END,))
                with self.compute_lock:
                    session.step(up)
                self.stats["replays"] += 1
                P.write_frame(conn, P.array_frame(P.Kind.OK, [session.pos], rid, g.seq, P.DType.I64),
                              self.read_timeout)
                continue
            t0 = time.perf_counter()
            waited = [0.0]

            def send_down(name, h1, seq=seq):
                P.write_frame(conn, P.activation_frame(P.Kind.DOWN_H1, h1, plan.fmt, rid, seq), self.read_timeout)

            def receive_up(seq=seq, waited=waited):
                t = time.perf_counter()
                g = self._read(conn)
                self._expect(g, rid, (P.Kind.UP_PF,))
                if g.seq != seq:
                    raise P.FrameError("unexpected", f"seq {g.seq} inside step {seq}")
                waited[0] += time.perf_counter() - t
                return {"pf": g.activation()}
            with self.compute_lock:
                tok = session.step(up, send_down, receive_up)
            self._token(conn, rid, seq, tok, time.perf_counter() - t0 - waited[0])

    def _token(self, conn, rid: int, seq: int, tok: int, seconds: float) -> None:
        self.stats["tokens"] += 1
        load = min(1.0, len(self.sessions) / 8.0)
        P.write_frame(conn, P.array_frame(P.Kind.TOKEN, [tok, seconds, load], rid, seq, P.DType.F64),
                      self.read_timeout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="splitrl-cloud", description="Serve the cloud half of split inference.")
    ap.add_argument("--model", default=None, help="HF model directory or .gguf (default: the embedded SmolLM2)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    ap.add_argument("--port", type=int, default=7341)
    ap.add_argument("--token-file", default=None, help="file holding the shared token; peers must authenticate")
    ap.add_argument("--ffn-chunks", type=int, default=4)
    ap.add_argument("--read-timeout", type=float, default=30.0)
    ap.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: never)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from splitrl.lm.model import load_causal_lm
    torch.set_num_threads(a.threads)
    lm = load_causal_lm(a.model)
    token = open(a.token_file, "rb").read().strip() if a.token_file else None
    server = CloudServer(SplitModel(lm.model, ffn_chunks=a.ffn_chunks), a.host, a.port, token, a.read_timeout,
                         eos=lm.tokenizer.eos_token_id)
    print(f"splitrl-cloud: serving {lm.name} on {server.host}:{server.port}", flush=True)
    try:
        server.serve_forever(a.duration)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
