"""The edge<->cloud wire protocol: length-prefixed binary frames, no pickle, no code on the wire.

A frame is a fixed 44-byte header followed by `payload_len` raw bytes:

    offset size field
    0      4    magic b"SPRL"
    4      1    version (PROTOCOL_VERSION)
    5      1    kind      (Kind)
    6      1    dtype     (DType: how the payload is laid out)
    7      1    ndim      (0..4)
    8      8    request id
    16     4    sequence number (decode step; REPLAY for checkpoint replays)
    20     16   shape, 4 x u32 (unused dimensions 0)
    36     4    payload length (<= the reader's max_payload)
    40     4    CRC-32 (zlib) of the header with this field zeroed, then the payload

All integers are big-endian. A reader checks, in order: magic, version, kind, dtype, ndim, payload
length and every dimension against the payload bound (before reading the payload or doing any size
arithmetic), CRC, and that the payload length matches dtype x shape (closed form, exact integers);
any failure raises a FrameError naming the reason (`reason` is one word, for counters). Every read has
a deadline: a silent peer raises FrameTimeout, a peer that hangs up mid-frame raises
FrameError("truncated"). Authentication (HELLO / AUTH) is in auth.py.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import socket
import struct
import time
import zlib

import numpy as np

from splitrl.runtime import wire

MAGIC = b"SPRL"
PROTOCOL_VERSION = 1
HEADER = struct.Struct("!4sBBBBQI4III")
MAX_NDIM = 4
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024
REPLAY = 0xFFFFFFFF


class Kind(enum.IntEnum):
    HELLO = 1      # server -> client: u8[32] nonce
    AUTH = 2       # client -> server: u8[32] HMAC (or empty without a token)
    OK = 3         # either way: i64[...] optional values
    ERROR = 4      # either way: u8 utf-8 reason
    PING = 5
    PONG = 6       # cloud -> edge: i64 [ready, free request slots]
    OPEN = 10      # edge -> cloud: i32 [boundary, fmt, units..., max_new]; replaces a session of that id
    IDS = 11       # edge -> cloud: i32 token ids (cloud-only: prompt + tokens already received)
    UP_H = 12      # edge -> cloud: hidden state crossing up (activation dtypes)
    UP_PA = 13     # edge -> cloud: edge attention units' partial sum
    UP_PF = 14     # edge -> cloud: edge FFN chunks' partial sum
    REPLAY_END = 15  # edge -> cloud: the checkpoint replay is complete (seq = steps replayed)
    DOWN_H1 = 16   # cloud -> edge: hidden state after layer b's attention (activation dtypes)
    TOKEN = 17     # cloud -> edge: f64 [token, cloud compute seconds, cloud load, seconds waited for the model]
    CLOSE = 18     # edge -> cloud: the request is answered; the cloud forgets it and refuses it from now on
    # conversations (splitrl/runtime/conversation.py): the cloud keeps a chat's caches between turns
    TURN = 19      # edge -> cloud: i64 [conversation, positions held, boundary, fmt, units..., max_new]; OPEN for a turn
    MIGRATE = 20   # edge -> cloud: i64 [conversation, positions, how (0 K/V, 1 recompute), old plan, new plan]
    KV_MOVE = 21   # either way: fp16 [2, heads, positions, head_dim], K then V of one moving layer's units
    HID_MOVE = 22  # either way: a moved layer's input over positions seq.. (the new plan's format)
    MOVED = 23     # either way: the hidden-state runs of a recompute are complete (seq = runs sent)
    FORGET = 24    # edge -> cloud: the conversation is over; the cloud drops its caches


UP_KINDS = {"h": Kind.UP_H, "pa": Kind.UP_PA, "pf": Kind.UP_PF}
UP_NAMES = {v: k for k, v in UP_KINDS.items()}


class DType(enum.IntEnum):
    U8 = 0
    FP16 = 1       # activation, wire format fp16
    INT8Q = 2      # activation, wire format int8 (groups of QUANT_GROUP with fp16 scales)
    INT4Q = 3      # activation, wire format int4
    I32 = 4
    F32 = 5
    F64 = 6
    I64 = 7


ACT_DTYPES = {"fp16": DType.FP16, "int8": DType.INT8Q, "int4": DType.INT4Q}
ACT_FORMATS = {v: k for k, v in ACT_DTYPES.items()}
NP_DTYPES = {DType.U8: np.dtype("u1"), DType.I32: np.dtype(">i4"), DType.F32: np.dtype(">f4"),
             DType.F64: np.dtype(">f8"), DType.I64: np.dtype(">i8")}


class FrameError(Exception):
    """A frame that must be rejected; `reason` is a short word for counters, the message says more."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class FrameTimeout(FrameError):
    def __init__(self, message: str):
        super().__init__("timeout", message)


class ConnectionClosed(FrameError):
    def __init__(self, message: str = "peer closed the connection between frames"):
        super().__init__("closed", message)


@dataclasses.dataclass
class Frame:
    kind: Kind
    request_id: int = 0
    seq: int = 0
    dtype: DType = DType.U8
    shape: tuple[int, ...] = (0,)
    payload: bytes = b""

    def array(self) -> np.ndarray:
        """The payload as a numpy array (plain dtypes) in native byte order."""
        if self.dtype not in NP_DTYPES:
            raise FrameError("dtype", f"{self.dtype.name} is an activation format: use activation()")
        return np.frombuffer(self.payload, NP_DTYPES[self.dtype]).reshape(self.shape).astype(
            NP_DTYPES[self.dtype].newbyteorder("="))

    def activation(self):
        """The payload as the float32 torch tensor the receiver computes with."""
        if self.dtype not in ACT_FORMATS:
            raise FrameError("dtype", f"{self.dtype.name} is not an activation format")
        return wire.decode(self.payload, ACT_FORMATS[self.dtype], self.shape)

    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- building frames
def array_frame(kind: Kind, values, request_id: int = 0, seq: int = 0, dtype: DType = DType.I32) -> Frame:
    a = np.ascontiguousarray(np.asarray(values).astype(NP_DTYPES[dtype]))
    return Frame(kind, request_id, seq, dtype, tuple(a.shape), a.tobytes())


def activation_frame(kind: Kind, x, fmt: str, request_id: int, seq: int) -> Frame:
    return Frame(kind, request_id, seq, ACT_DTYPES[fmt], tuple(x.shape), wire.encode(x, fmt))


def text_frame(kind: Kind, text: str, request_id: int = 0, seq: int = 0) -> Frame:
    data = text.encode("utf-8")[:4096]
    return Frame(kind, request_id, seq, DType.U8, (len(data),), data)


def expected_payload(dtype: DType, shape: tuple[int, ...]) -> int:
    """Bytes that dtype x shape needs, in closed form over exact Python integers (no overflow, no
    loop over a dimension)."""
    if dtype in ACT_FORMATS:
        if not shape or any(s <= 0 for s in shape):
            raise FrameError("shape", f"activation shape {shape} must have positive dimensions")
        return wire.nbytes(shape, ACT_FORMATS[dtype])
    return math.prod(shape) * NP_DTYPES[dtype].itemsize


def encode_frame(f: Frame) -> bytes:
    if len(f.shape) > MAX_NDIM:
        raise FrameError("shape", f"{len(f.shape)} dimensions; at most {MAX_NDIM}")
    shape = tuple(f.shape) + (0,) * (MAX_NDIM - len(f.shape))
    head = HEADER.pack(MAGIC, PROTOCOL_VERSION, int(f.kind), int(f.dtype), len(f.shape), f.request_id,
                       f.seq, *shape, len(f.payload), 0)
    crc = zlib.crc32(f.payload, zlib.crc32(head))
    return head[:-4] + struct.pack("!I", crc) + f.payload


def parse_header(head: bytes, max_payload: int) -> tuple[Frame, int, int]:
    """(frame without payload, payload length, crc) from the 44 header bytes, or FrameError."""
    magic, version, kind, dtype, ndim, rid, seq, s0, s1, s2, s3, n, crc = HEADER.unpack(head)
    if magic != MAGIC:
        raise FrameError("magic", f"bad magic {magic!r}: the peer does not speak this protocol")
    if version != PROTOCOL_VERSION:
        raise FrameError("version", f"protocol version {version}; this side speaks {PROTOCOL_VERSION}")
    try:
        kind, dtype = Kind(kind), DType(dtype)
    except ValueError as e:
        raise FrameError("kind", str(e)) from e
    if ndim > MAX_NDIM:
        raise FrameError("shape", f"ndim {ndim} > {MAX_NDIM}")
    if n > max_payload:
        raise FrameError("oversized", f"payload of {n} bytes exceeds the bound of {max_payload}")
    # two int4 values per byte: no dimension of a frame that fits the bound exceeds 2 x the bound
    if max(s0, s1, s2, s3) > 2 * max_payload:
        raise FrameError("oversized", f"shape {(s0, s1, s2, s3)[:ndim]} cannot fit in {max_payload} bytes")
    shape = (s0, s1, s2, s3)[:ndim]
    if any(shape[i] == 0 for i in range(ndim)) and dtype in ACT_FORMATS or any((s0, s1, s2, s3)[ndim:]):
        raise FrameError("shape", f"shape fields {(s0, s1, s2, s3)} with ndim {ndim}")
    return Frame(kind, rid, seq, dtype, shape), n, crc


def decode_frame(data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """A frame from a complete byte string (tests, fuzzing)."""
    if len(data) < HEADER.size:
        raise FrameError("truncated", f"{len(data)} bytes is shorter than a header")
    frame, n, crc = parse_header(data[: HEADER.size], max_payload)
    payload = data[HEADER.size:]
    if len(payload) != n:
        raise FrameError("truncated", f"payload has {len(payload)} bytes, the header says {n}")
    return finish(frame, data[: HEADER.size], payload, crc)


def finish(frame: Frame, head: bytes, payload: bytes, crc: int) -> Frame:
    if zlib.crc32(payload, zlib.crc32(head[:-4] + b"\0\0\0\0")) != crc:
        raise FrameError("checksum", f"CRC mismatch on a {frame.kind.name} frame of {len(payload)} bytes")
    want = expected_payload(frame.dtype, frame.shape)
    if want != len(payload):
        raise FrameError("shape", f"{frame.dtype.name} of shape {frame.shape} needs {want} bytes, got {len(payload)}")
    frame.payload = payload
    return frame


# ----------------------------------------------------------------------------- sockets
def recv_exact(sock: socket.socket, n: int, deadline: float, at_boundary: bool) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FrameTimeout(f"no complete frame within the read timeout ({len(buf)}/{n} bytes)")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except TimeoutError as e:
            raise FrameTimeout(f"no complete frame within the read timeout ({len(buf)}/{n} bytes)") from e
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
            raise FrameError("reset", f"connection reset ({e})") from e
        if not chunk:
            if at_boundary and not buf:
                raise ConnectionClosed()
            raise FrameError("truncated", f"peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, timeout: float, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Frame:
    """Read one frame within `timeout` seconds, or raise FrameError (FrameTimeout, ConnectionClosed)."""
    deadline = time.monotonic() + timeout
    head = recv_exact(sock, HEADER.size, deadline, at_boundary=True)
    frame, n, crc = parse_header(head, max_payload)
    payload = recv_exact(sock, n, deadline, at_boundary=False) if n else b""
    return finish(frame, head, payload, crc)


def write_frame(sock: socket.socket, frame: Frame, timeout: float) -> int:
    data = encode_frame(frame)
    sock.settimeout(timeout)
    try:
        sock.sendall(data)
    except TimeoutError as e:
        raise FrameTimeout(f"could not send {len(data)} bytes within {timeout} s") from e
    except OSError as e:
        raise FrameError("reset", f"send failed ({e})") from e
    return len(data)
