"""The wire protocol: frames round-trip; each bad frame kind is rejected with its reason and the
server stays up; authentication; every read has a deadline."""

from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest
import torch

from splitrl.runtime import auth as A
from splitrl.runtime import protocol as P
from splitrl.runtime.cloud import CloudServer
from splitrl.runtime.edge import EdgeClient, Request
from splitrl.runtime.limits import Limits
from tests.harness_tiny import PROMPT, reference_tokens, tiny_split_model

TOKEN = b"correct horse battery staple"


@pytest.fixture(scope="module")
def sm():
    return tiny_split_model()


@pytest.fixture
def server(sm):
    s = CloudServer(sm, token=TOKEN, limits=Limits(read_s=1.0, max_payload=1 << 16)).start()
    yield s
    s.stop()


def good_request_works(server, sm, rid):
    client = EdgeClient(sm, [(server.host, server.port)], token=TOKEN, timeout=5, fallback="none")
    try:
        res = client.generate(Request(rid, PROMPT, 4), sm.plan(1, "fp16", (1, 0, 1, 0, 0, 1)))
    finally:
        client.close()
    return res.status == "ok" and res.tokens == reference_tokens(sm, n=4)


def test_frames_round_trip():
    x = torch.randn(1, 3, 64)
    for f in (P.array_frame(P.Kind.OPEN, [1, 2, 3], 7, 9), P.activation_frame(P.Kind.UP_H, x, "int4", 7, 2),
              P.text_frame(P.Kind.ERROR, "nope"), P.Frame(P.Kind.PING)):
        g = P.decode_frame(P.encode_frame(f))
        assert (g.kind, g.request_id, g.seq, g.dtype, g.shape, g.payload) == (f.kind, f.request_id, f.seq, f.dtype,
                                                                              f.shape, f.payload)
    assert P.decode_frame(P.encode_frame(P.array_frame(P.Kind.OPEN, [1, -2, 3]))).array().tolist() == [1, -2, 3]


def _bad_frames():
    good = P.encode_frame(P.array_frame(P.Kind.OPEN, [1, 0, 0, 0, 0, 0, 0, 0, 4], 1))
    head = bytearray(good[: P.HEADER.size])
    bad_magic = b"EVIL" + good[4:]
    bad_version = good[:4] + bytes([99]) + good[5:]
    oversized = bytearray(head)
    oversized[36:40] = struct.pack("!I", 1 << 30)
    wrong_crc = good[:-1] + bytes([good[-1] ^ 1])
    unknown_kind = good[:5] + bytes([200]) + good[6:]
    # a correct CRC over a payload whose length does not match dtype x shape
    f = P.Frame(P.Kind.OPEN, 1, 0, P.DType.I32, (5,), b"\0" * 8)
    bad_shape = P.encode_frame(f)
    return {"magic": bad_magic, "version": bad_version, "oversized": bytes(oversized), "checksum": wrong_crc,
            "kind": unknown_kind, "shape": bad_shape, "truncated": good[:-5]}


@pytest.mark.parametrize("reason", sorted(_bad_frames()))
def test_server_rejects_each_bad_frame_and_stays_up(server, sm, reason):
    data = _bad_frames()[reason]
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        A.client_handshake(s, TOKEN, 5)
        s.sendall(data)
        if reason == "truncated":
            s.shutdown(socket.SHUT_WR)      # the peer hangs up mid-frame
        reply = P.read_frame(s, 5)
        assert reply.kind == P.Kind.ERROR and reason in reply.text()
    assert server.stats[f"rejected/{reason}"] == 1
    assert good_request_works(server, sm, rid=100)


def test_decode_frame_names_each_reason():
    for reason, data in _bad_frames().items():
        with pytest.raises(P.FrameError) as e:
            P.decode_frame(data, max_payload=1 << 16)
        assert e.value.reason == reason


def test_auth_rejects_wrong_and_missing_tokens(server, sm):
    for token in (b"wrong", None):
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            with pytest.raises(P.FrameError, match="auth"):
                A.client_handshake(s, token, 5)
    assert server.stats["rejected/auth"] == 2
    assert good_request_works(server, sm, rid=101)


def test_binds_loopback_by_default_and_every_read_has_a_deadline(server, sm):
    assert server.host == "127.0.0.1"
    with socket.create_connection((server.host, server.port), timeout=5) as s:
        A.client_handshake(s, TOKEN, 5)
        s.sendall(P.encode_frame(P.Frame(P.Kind.PING))[:10])     # half a header, then silence
        t0 = time.monotonic()
        reply = P.read_frame(s, 5)
        assert reply.kind == P.Kind.ERROR and "timeout" in reply.text()
        assert time.monotonic() - t0 < 3.0
    assert server.stats["rejected/timeout"] == 1
    with socket.socket() as s:                 # and the client side too
        s.bind(("127.0.0.1", 0))
        s.listen()
        with socket.create_connection(s.getsockname(), timeout=5) as c:
            with pytest.raises(P.FrameTimeout):
                P.read_frame(c, 0.2)


def test_no_pickle_on_the_wire():
    """Frames carry raw little/big-endian numbers only: an array frame is exactly its values."""
    f = P.array_frame(P.Kind.TOKEN, [3.0, 0.5, 0.0], dtype=P.DType.F64)
    assert P.encode_frame(f)[P.HEADER.size:] == np.array([3.0, 0.5, 0.0], ">f8").tobytes()
