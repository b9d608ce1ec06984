"""The cloud server's bounds: closed-form sizes, AUTH-only parsing before authentication, named errors
for every invalid request, connection caps, accept errors, step deadlines and cancellation, sessions
owned by their connection, unique request ids, and auth that is on or off, never half."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time

import pytest
import torch

from splitrl.runtime import auth as A
from splitrl.runtime import protocol as P
from splitrl.runtime import wire
from splitrl.runtime.cloud import CloudServer
from splitrl.runtime.edge import EdgeClient, Request
from splitrl.runtime.limits import Limits
from tests.harness_tiny import PROMPT, legit_request, tiny_split_model

TOKEN = b"correct horse battery staple"
LIMITS = Limits(read_s=2.0, max_rows=16, max_payload=1 << 16)


@pytest.fixture(scope="module")
def sm():
    return tiny_split_model()


@pytest.fixture
def server(sm):
    s = CloudServer(sm, token=TOKEN, limits=LIMITS).start()
    yield s
    s.stop()


def authed(server, token=TOKEN) -> socket.socket:
    s = socket.create_connection((server.host, server.port), timeout=5)
    A.client_handshake(s, token, 5)
    return s


def first_error(s: socket.socket, frames) -> str:
    """Send the frames, return the text of the first ERROR (OK and TOKEN replies are skipped)."""
    s.sendall(b"".join(P.encode_frame(f) for f in frames))
    while True:
        f = P.read_frame(s, 5)
        if f.kind == P.Kind.ERROR:
            return f.text()


def still_serves(server, sm, token=TOKEN) -> bool:
    return legit_request(sm, (server.host, server.port), token)[0]


def test_sizes_are_closed_form_and_exact():
    from splitrl.profiles.formats import QUANT_GROUP, SCALE_BYTES, TX_BITS
    for fmt in ("fp16", "int8", "int4"):
        for d in range(1, 300):
            loop = 2 * d if fmt == "fp16" else sum(SCALE_BYTES + (min(QUANT_GROUP, d - s) * TX_BITS[fmt] + 7) // 8
                                                   for s in range(0, d, QUANT_GROUP))
            assert wire.row_bytes(d, fmt) == loop
    t0 = time.perf_counter()
    huge = P.expected_payload(P.DType.INT4Q, (2**32 - 1, 2**32 - 1, 2**32 - 1))
    assert huge == (2**32 - 1) ** 2 * wire.row_bytes(2**32 - 1, "int4") and time.perf_counter() - t0 < 0.01
    assert P.expected_payload(P.DType.I64, (2**32 - 1,) * 4) == (2**32 - 1) ** 4 * 8     # no int64 overflow


def int4_bomb() -> bytes:
    """The 44-byte frame of the issue: an INT4Q tensor header with a dimension of 2^32 - 1."""
    head = P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, P.Kind.UP_H, P.DType.INT4Q, 1, 1, 0, 2**32 - 1, 0, 0, 0, 0, 0)
    return head


def test_a_huge_dimension_is_refused_from_the_header_alone():
    with pytest.raises(P.FrameError) as e:
        P.parse_header(int4_bomb(), max_payload=1 << 16)
    assert e.value.reason == "oversized"


@pytest.mark.parametrize("authenticated", [False, True])
def test_the_int4_bomb_is_rejected_at_once(server, sm, authenticated):
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        if authenticated:
            A.client_handshake(s, TOKEN, 5)
        else:
            P.read_frame(s, 5)              # HELLO
        t0 = time.perf_counter()
        s.sendall(int4_bomb())
        text = P.read_frame(s, 5).text()
        assert time.perf_counter() - t0 < 1.0
    assert text.startswith("oversized" if authenticated else "auth: expected AUTH")
    assert server.stats["rejected/oversized" if authenticated else "rejected/auth"] == 1
    assert still_serves(server, sm)


def _open(b, units, max_new=4, fmt=0):
    return P.array_frame(P.Kind.OPEN, [b, fmt, *units, max_new], 7)


def _up(kind, rows, d=64, fmt="fp16", fill=0.5, seq=0):
    x = torch.full((1, rows, d), fill)
    return P.activation_frame(kind, x, fmt, 7, seq)


CLOUD = (0, (0,) * 6)
SPLIT_H = (1, (0,) * 6)                 # up: h
SPLIT_H_PA = (1, (1, 0, 0, 0, 0, 0))    # up: h and pa
INVALID = {   # case -> (frames, the reason the cloud must name)
    "plan_count": ([P.array_frame(P.Kind.OPEN, [1, 0, 0, 0, 0, 0, 0, 0], 7)], "plan"),
    "boundary_L": ([_open(3, (0,) * 6)], "plan"),
    "format": ([_open(1, (0,) * 6, fmt=7)], "plan"),
    "max_new": ([_open(*SPLIT_H, max_new=2**31 - 1)], "limit"),
    "token_ids": ([_open(*CLOUD), P.array_frame(P.Kind.IDS, [5, 128], 7)], "tokens"),
    "negative_id": ([_open(*CLOUD), P.array_frame(P.Kind.IDS, [-1], 7)], "tokens"),
    "rows": ([_open(*CLOUD), P.array_frame(P.Kind.IDS, [5] * 17, 7)], "limit"),
    "positions": ([_open(*CLOUD, max_new=120), P.array_frame(P.Kind.IDS, [5] * 16, 7)], "limit"),
    "int64_overflow": ([_open(*CLOUD), P.Frame(P.Kind.IDS, 7, 0, P.DType.I32, (65535, 65535, 65535), b"\0" * 4)],
                       "shape"),
    "hidden_size": ([_open(*SPLIT_H), _up(P.Kind.UP_H, 8, d=63)], "shape"),
    "rows_disagree": ([_open(*SPLIT_H_PA), _up(P.Kind.UP_H, 8), _up(P.Kind.UP_PA, 7)], "shape"),
    "format_mismatch": ([_open(*SPLIT_H), _up(P.Kind.UP_H, 8, fmt="int8")], "dtype"),
    "nan": ([_open(*SPLIT_H), _up(P.Kind.UP_H, 8, fill=float("nan"))], "nonfinite"),
    "inf": ([_open(*SPLIT_H), _up(P.Kind.UP_H, 8, fill=float("inf"))], "nonfinite"),
    "step_past_max_new": ([_open(*SPLIT_H, max_new=1), _up(P.Kind.UP_H, 8, seq=1)], "limit"),
    "step_without_open": ([_up(P.Kind.UP_H, 8)], "unexpected"),
    "activation_to_cloud_only": ([_open(*CLOUD), _up(P.Kind.UP_H, 8)], "unexpected"),
    "ids_to_a_split": ([_open(*SPLIT_H), P.array_frame(P.Kind.IDS, [5, 6], 7)], "unexpected"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_every_invalid_request_gets_a_named_error_before_compute(server, sm, case):
    frames, reason = INVALID[case]
    with authed(server) as s:
        text = first_error(s, frames)
    assert text.split(":")[0] == reason, text
    assert server.stats[f"rejected/{reason}"] == 1 and server.stats["steps"] == 0
    assert server.stats["rejected/internal"] == 0
    assert still_serves(server, sm)


def test_handshake_slots_evict_the_oldest_and_connection_slots_say_busy(sm):
    server = CloudServer(sm, token=TOKEN, limits=Limits(max_unauth=2, max_conns=1, read_s=2.0)).start()
    try:
        # The first must have its HELLO before the third can evict it (a race otherwise).
        idle = [socket.create_connection((server.host, server.port), timeout=5)]
        assert P.read_frame(idle[0], 5).kind == P.Kind.HELLO
        idle += [socket.create_connection((server.host, server.port), timeout=5) for _ in range(2)]
        with pytest.raises(P.ConnectionClosed):          # evicted by the third
            P.read_frame(idle[0], 5)
        assert server.stats["evicted/handshake"] == 1
        for s in idle:
            s.close()
        with authed(server):
            with pytest.raises(P.FrameError, match="busy"):
                authed(server).close()
            assert server.stats["rejected/busy"] == 1
            assert server.readiness()["reason"] == "connection cap reached"
        assert server.wait_for(lambda s: s.readiness()["ready"], 5)
        assert still_serves(server, sm)
    finally:
        server.stop()


class FlakyListener:
    """A listener whose first `n` accepts fail as when the process is out of descriptors."""

    def __init__(self, real: socket.socket, n: int):
        self.real, self.n = real, n

    def accept(self):
        if self.n:
            self.n -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_accept_errors_are_logged_and_backed_off_not_fatal(sm, caplog):
    server = CloudServer(sm, token=TOKEN, limits=LIMITS)
    server._listener = FlakyListener(server._listener, 3)
    with caplog.at_level(logging.WARNING, logger="splitrl.cloud"):
        server.start()
        try:
            assert still_serves(server, sm)
        finally:
            server.stop()
    assert server.stats["accept_errors"] == 3
    assert sum("out of file descriptors" in r.getMessage() for r in caplog.records) == 3


def test_a_step_past_its_deadline_stops_and_the_edge_falls_back(sm):
    server = CloudServer(sm, token=TOKEN, limits=Limits(step_s=1e-9, read_s=2.0)).start()
    client = EdgeClient(sm, [(server.host, server.port)], token=TOKEN, timeout=5)
    try:
        res = client.generate(Request(0, PROMPT, 3), sm.plan(1, "fp16", (1, 0, 1, 0, 0, 1)))
    finally:
        client.close()
        server.stop()
    assert res.status == "ok" and res.fell_back == "edge" and server.stats["rejected/deadline"] == 3
    assert server.stats["steps"] == 0 and server.session_count() == 0


def test_a_step_whose_client_hung_up_stops_between_layers(sm, server, monkeypatch):
    entered, release, calls = threading.Event(), threading.Event(), []
    full_layer = sm.full_layer

    def gated(*args, **kw):
        calls.append(args[1])
        entered.set()
        release.wait(5)
        return full_layer(*args, **kw)
    monkeypatch.setattr(sm, "full_layer", gated)
    s = authed(server)
    s.sendall(P.encode_frame(_open(*CLOUD)) + P.encode_frame(P.array_frame(P.Kind.IDS, list(PROMPT), 7)))
    assert P.read_frame(s, 5).kind == P.Kind.OK
    assert entered.wait(5)
    s.close()                          # the client gives up during layer 0
    release.set()
    assert server.wait_for(lambda srv: srv.stats["rejected/cancelled"] == 1 and srv.session_count() == 0, 5)
    assert calls == [0]                # layers 1 and 2 never ran
    monkeypatch.undo()
    assert still_serves(server, sm)


def test_a_session_is_freed_when_its_client_hangs_up_without_close(server, sm):
    s = authed(server)
    s.sendall(P.encode_frame(_open(*SPLIT_H)) + P.encode_frame(_up(P.Kind.UP_H, 8)))
    assert P.read_frame(s, 5).kind == P.Kind.OK and P.read_frame(s, 5).kind == P.Kind.TOKEN
    assert server.session_count() == 1
    s.close()
    assert server.wait_for(lambda srv: srv.session_count() == 0, 5)


def test_session_cap_and_ttl(sm):
    server = CloudServer(sm, token=TOKEN, limits=Limits(max_sessions=1, read_s=2.0)).start()
    try:
        with authed(server) as a:
            a.sendall(P.encode_frame(_open(*SPLIT_H)))
            assert P.read_frame(a, 5).kind == P.Kind.OK
            with authed(server) as b:
                assert first_error(b, [_open(*SPLIT_H)]).startswith("busy")
            assert server.readiness()["reason"] == "no free request slot"
        assert server.wait_for(lambda srv: srv.session_count() == 0, 5)
        assert still_serves(server, sm)
    finally:
        server.stop()
    server = CloudServer(sm, token=TOKEN, limits=Limits(session_ttl_s=1e-9, read_s=2.0)).start()
    try:
        with authed(server) as a:
            assert first_error(a, [_open(*SPLIT_H), _up(P.Kind.UP_H, 8)]).startswith("ttl")
    finally:
        server.stop()


def test_request_ids_are_random_per_request_so_reruns_use_the_cloud(server, sm):
    for _ in range(2):       # two runs of an edge, each numbering its requests from 0
        client = EdgeClient(sm, [(server.host, server.port)], token=TOKEN, timeout=5, fallback="none")
        try:
            res = client.generate(Request(0, PROMPT, 3), sm.plan(1, "fp16", (0,) * 6))
        finally:
            client.close()
        assert res.status == "ok" and not res.fell_back and res.rid == 0
    assert server.stats["closed"] == 2 and server.stats["refused/answered"] == 0
    with authed(server) as s:                 # an answered id itself is still refused
        rid = next(iter(server._answered))
        assert first_error(s, [P.array_frame(P.Kind.OPEN, [1, 0, *(0,) * 6, 3], rid)]).startswith("answered")


@pytest.mark.parametrize("token", [b"", b"   \n", b"short", b"fifteen bytes!!"])
def test_a_short_token_is_refused_at_start_up(sm, token, tmp_path):
    with pytest.raises(A.TokenError, match=f"at least {A.MIN_TOKEN_BYTES}"):
        CloudServer(sm, token=token)
    f = tmp_path / "token"
    f.write_bytes(token)
    with pytest.raises(A.TokenError, match=str(f)):
        A.load_token(f)


def test_auth_is_on_or_off_never_half(sm, tmp_path, caplog):
    with pytest.raises(A.TokenError, match="insecure_no_auth"):
        CloudServer(sm)
    with pytest.raises(A.TokenError, match="not both"):
        CloudServer(sm, token=TOKEN, insecure_no_auth=True)
    with pytest.raises(A.TokenError, match="no such file"):
        A.load_token(tmp_path / "missing")
    (tmp_path / "t").write_bytes(b"  " + TOKEN + b"\n")
    assert A.load_token(tmp_path / "t") == TOKEN
    with caplog.at_level(logging.INFO, logger="splitrl.cloud"):
        for kw in ({"token": TOKEN}, {"insecure_no_auth": True}):
            s = CloudServer(sm, **kw).start()
            s.stop()
    said = [r.getMessage() for r in caplog.records if "listening" in r.getMessage()]
    assert "auth ON" in said[0] and "auth OFF (--insecure-no-auth" in said[1]


def test_a_server_without_auth_ignores_the_mac_and_one_with_auth_refuses_an_empty_one(sm, server):
    open_server = CloudServer(sm, insecure_no_auth=True).start()
    try:
        assert legit_request(sm, (open_server.host, open_server.port), TOKEN)[0]
        assert legit_request(sm, (open_server.host, open_server.port), None)[0]
    finally:
        open_server.stop()
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        with pytest.raises(P.FrameError, match="auth"):
            A.client_handshake(s, None, 5)
    assert server.stats["rejected/auth"] == 1


def test_health_endpoints_say_loading_then_ready_then_draining(sm):
    import json
    import urllib.error
    import urllib.request

    from splitrl.runtime.health import HealthServer

    def get(path):
        try:
            with urllib.request.urlopen(f"http://{health.host}:{health.port}{path}", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    health = HealthServer("127.0.0.1", 0).start()
    try:
        assert get("/v2/health/live") == (200, {"live": True})
        assert get("/v2/health/ready") == (503, {"ready": False, "reason": "loading the model"})
        server = CloudServer(sm, token=TOKEN, limits=LIMITS).start()
        health.status = server.readiness
        code, body = get("/v2/health/ready")
        assert code == 200 and body["ready"] and body["free_sessions"] == LIMITS.max_sessions
        server.request_drain()
        assert server.wait_for(lambda s: s.draining, 5)
        code, body = get("/v2/health/ready")
        assert code == 503 and body["reason"] in ("draining", "stopped")
        assert get("/nope")[0] == 404
    finally:
        health.close()
        server.stop()


def test_drain_finishes_in_flight_requests_and_refuses_new_ones(sm):
    server = CloudServer(sm, token=TOKEN, limits=LIMITS).start()
    busy, idle = authed(server), authed(server)
    busy.sendall(P.encode_frame(_open(*SPLIT_H)))
    assert P.read_frame(busy, 5).kind == P.Kind.OK            # a request in flight
    server.request_drain()
    assert server.wait_for(lambda s: s.draining, 5)
    with pytest.raises(P.ConnectionClosed):                  # the idle connection is closed
        P.read_frame(idle, 5)
    with pytest.raises(OSError):                             # nobody new gets in
        authed(server)
    busy.sendall(P.encode_frame(_up(P.Kind.UP_H, 8)))         # the in-flight request finishes
    assert P.read_frame(busy, 5).kind == P.Kind.TOKEN
    busy.sendall(P.encode_frame(P.Frame(P.Kind.CLOSE, 7)))
    assert P.read_frame(busy, 5).kind == P.Kind.OK
    with pytest.raises(P.ConnectionClosed):                  # then its connection closes too
        P.read_frame(busy, 5)
    server._thread.join(5)
    assert not server._thread.is_alive() and server.stopping and server.stats["closed"] == 1
    busy.close()
    idle.close()


def test_an_edge_skips_a_draining_or_full_endpoint(sm):
    full = CloudServer(sm, token=TOKEN, limits=Limits(max_sessions=1, read_s=2.0)).start()
    other = CloudServer(sm, token=TOKEN, limits=LIMITS).start()
    keep = authed(full)
    keep.sendall(P.encode_frame(_open(*SPLIT_H)))
    assert P.read_frame(keep, 5).kind == P.Kind.OK            # its only request slot is taken
    client = EdgeClient(sm, [(full.host, full.port), (other.host, other.port)], token=TOKEN, timeout=5)
    try:
        res = client.generate(Request(0, PROMPT, 3), sm.plan(1, "fp16", (0,) * 6))
        assert res.status == "ok" and res.fell_back == "endpoint" and res.retries == 1   # PONG said "not ready"
        assert client.errors["unready"] == 1
        full.request_drain()                     # it finishes `keep`'s request, takes no new one
        assert full.wait_for(lambda s: s.draining, 5)
        res = client.generate(Request(1, PROMPT, 3), sm.plan(1, "fp16", (0,) * 6))
        assert res.status == "ok" and res.fell_back == "endpoint"
        assert full.readiness()["reason"] == "draining" and full.session_count() == 1
    finally:
        client.close()
        keep.close()
        full.stop()
        other.stop()
    assert full.stats["opened"] == 1 and other.stats["closed"] == 2


def test_the_cloud_publishes_its_wait_and_the_edge_reads_it(server):
    """estimated_wait = (forwards waiting + the one running) x the mean forward; readiness and PONG carry it,
    and the edge keeps what the last PONG said (the policy's cloud_wait feature)."""
    from splitrl.runtime.edge import RemoteLink
    from splitrl.runtime.estimate import LinkEstimator
    assert server.estimated_wait() == 0.0 and server.readiness()["est_wait_s"] == 0.0
    server.forward_done(0.5)
    assert server.estimated_wait() == 0.0                       # an idle model: nothing ahead
    server.compute_lock.acquire()                              # one forward running ...
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(server.acquire_model(5.0)))
    waiter.start()                                             # ... and one waiting
    try:
        deadline = time.monotonic() + 5
        while server._waiters == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.estimated_wait() == pytest.approx(1.0)
        est = LinkEstimator()
        link = RemoteLink(server.host, server.port, TOKEN, 5.0, est)
        link.connect()
        link.close()
        assert est.cloud_wait == pytest.approx(1.0, abs=1e-6)
    finally:
        server.compute_lock.release()
        waiter.join(5)
    assert got == [True]
    server.compute_lock.release()
    assert server.estimated_wait() == 0.0


@pytest.mark.parametrize("boundary", [0, 1], ids=["cloud-only", "split"])
def test_each_request_gets_the_cloud_compute_and_model_wait_its_token_frames_report(server, sm, boundary):
    """TOKEN frames carry each forward's compute and its wait for the model; the edge sums them per request
    (what scripts/fleet_loopback.py reports as the cloud wait). The model is held for >= 0.2 s after the
    request's first forward started waiting, so the reported wait is at least that (a bound, not a timing)."""
    client = EdgeClient(sm, [(server.host, server.port)], token=TOKEN, timeout=10, fallback="none")
    got: list = []
    server.compute_lock.acquire()
    worker = threading.Thread(target=lambda: got.append(client.generate(Request(0, PROMPT, 3),
                                                                        sm.plan(boundary, "fp16", (0,) * 6))))
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while server._waiters == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
    finally:
        server.compute_lock.release()
        worker.join(10)
        client.close()
    (res,) = got
    assert res.status == "ok" and len(res.tokens) == 3 and not res.fell_back
    assert res.cloud_wait_s >= 0.2 and res.cloud_s > 0
