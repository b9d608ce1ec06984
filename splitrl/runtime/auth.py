"""Authentication: shared tokens and the HELLO / AUTH handshake.

The server sends HELLO with a 32-byte nonce; the client answers AUTH with
HMAC-SHA256(token, "splitrl-auth-v1" + nonce); the server compares with hmac.compare_digest and sends
OK, or ERROR and hangs up. Before that exchange the server parses nothing but the AUTH frame: a fixed
header with kind AUTH, dtype U8, one dimension equal to the payload length, and a payload of 0 or 32
bytes. Any other frame is refused from its header alone, before any size arithmetic.

Auth is on or off, never half: a token is at least MIN_TOKEN_BYTES bytes (an empty or short token file
is an error, not "auth off"), and a server without a token must say so explicitly (insecure_no_auth).
Without a token the client sends an empty AUTH, and a server without auth ignores AUTH's content.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
import zlib
from pathlib import Path

from splitrl.runtime import protocol as P

AUTH_CONTEXT = b"splitrl-auth-v1"
NONCE_BYTES = 32
MAC_BYTES = 32
MIN_TOKEN_BYTES = 16
MAKE_TOKEN_HINT = "make one with: python -c 'import secrets; print(secrets.token_hex(32))' > token"


class TokenError(ValueError):
    pass


def check_token(token: bytes, where: str) -> bytes:
    """`token` stripped of surrounding whitespace, or TokenError when shorter than MIN_TOKEN_BYTES."""
    token = token.strip()
    if len(token) < MIN_TOKEN_BYTES:
        raise TokenError(f"{where}: the token has {len(token)} bytes; at least {MIN_TOKEN_BYTES} are required "
                         f"({MAKE_TOKEN_HINT})")
    return token


def load_token(path: str | Path, flag: str = "--token-file") -> bytes:
    """The shared token from a file, with an error that names the flag and the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise TokenError(f"{flag} {p}: no such file ({MAKE_TOKEN_HINT})") from None
    except OSError as e:
        raise TokenError(f"{flag} {p}: cannot read it ({e.strerror})") from None
    return check_token(data, f"{flag} {p}")


def auth_mac(token: bytes, nonce: bytes) -> bytes:
    return hmac.new(token, AUTH_CONTEXT + nonce, hashlib.sha256).digest()


def read_auth(sock, timeout: float) -> bytes:
    """The payload of the peer's AUTH frame. Only this frame's fixed fields are checked (no generic
    parsing before authentication); anything else raises FrameError("auth")."""
    deadline = time.monotonic() + timeout
    head = P.recv_exact(sock, P.HEADER.size, deadline, at_boundary=True)
    magic, version, kind, dtype, ndim, _rid, _seq, s0, s1, s2, s3, n, crc = P.HEADER.unpack(head)
    if magic != P.MAGIC or version != P.PROTOCOL_VERSION:
        raise P.FrameError("auth", f"expected an AUTH frame of protocol {P.PROTOCOL_VERSION}, got magic {magic!r} "
                                   f"version {version}")
    if kind != P.Kind.AUTH:
        raise P.FrameError("auth", f"expected AUTH before anything else, got frame kind {kind}")
    if dtype != P.DType.U8 or ndim != 1 or (s1, s2, s3) != (0, 0, 0) or s0 != n or n not in (0, MAC_BYTES):
        raise P.FrameError("auth", f"an AUTH frame carries 0 or {MAC_BYTES} bytes as u8[n]; got dtype {dtype}, "
                                   f"ndim {ndim}, shape {(s0, s1, s2, s3)}, {n} bytes")
    payload = P.recv_exact(sock, n, deadline, at_boundary=False) if n else b""
    if zlib.crc32(payload, zlib.crc32(head[:-4] + b"\0\0\0\0")) != crc:
        raise P.FrameError("auth", "CRC mismatch on the AUTH frame")
    return payload


def server_handshake(sock, token: bytes | None, timeout: float, admit=None) -> None:
    """Raise FrameError("auth") unless the peer proves it holds `token` (None: auth off, anyone).
    `admit()` runs after the proof and before OK: it may refuse the peer (e.g. "busy")."""
    nonce = os.urandom(NONCE_BYTES)
    P.write_frame(sock, P.Frame(P.Kind.HELLO, dtype=P.DType.U8, shape=(NONCE_BYTES,), payload=nonce), timeout)
    mac = read_auth(sock, timeout)
    if token is not None and not hmac.compare_digest(mac, auth_mac(token, nonce)):
        raise P.FrameError("auth", "the peer's HMAC does not match the shared token")
    if admit is not None:
        admit()
    P.write_frame(sock, P.Frame(P.Kind.OK), timeout)


def client_handshake(sock, token: bytes | None, timeout: float) -> None:
    hello = P.read_frame(sock, timeout, max_payload=1024)
    if hello.kind != P.Kind.HELLO or len(hello.payload) != NONCE_BYTES:
        raise P.FrameError("auth", f"expected HELLO with a {NONCE_BYTES}-byte nonce, got {hello.kind.name}")
    mac = auth_mac(token, hello.payload) if token is not None else b""
    P.write_frame(sock, P.Frame(P.Kind.AUTH, dtype=P.DType.U8, shape=(len(mac),), payload=mac), timeout)
    reply = P.read_frame(sock, timeout, max_payload=4096)
    if reply.kind == P.Kind.ERROR:
        raise P.FrameError("auth", f"the server refused us: {reply.text()}")
    if reply.kind != P.Kind.OK:
        raise P.FrameError("auth", f"expected OK after AUTH, got {reply.kind.name}")
