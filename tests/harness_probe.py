"""Tools of the probe suite (tests/test_harness_probes.py): a splitrl-cloud in a subprocess, the
"still answers within 2x its baseline" check, and bounded random and structured frames."""

from __future__ import annotations

import os
import random
import re
import resource
import statistics
import subprocess
import sys
import threading
import zlib
from pathlib import Path

from splitrl.runtime import protocol as P
from tests.harness_tiny import legit_request

REPO = Path(__file__).resolve().parents[1]


class CloudProcess:
    """`python -m splitrl.runtime.cloud_cli` on a model directory, its output lines collected so a
    test can wait for one (an event, not a sleep)."""

    def __init__(self, model_dir, *args: str, nofile: int | None = None, timeout: float = 60.0):
        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "splitrl.runtime.cloud_cli", "--model", str(model_dir),
                                      "--port", "0", *args], cwd=REPO, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     preexec_fn=limit if nofile else None)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()
        m = self.wait_line(r"serving \S+ on ([\d.]+):(\d+)", timeout)
        self.address = (m[1], int(m[2]))
        health = [re.search(r"health on http://([\d.]+):(\d+)/", line) for line in self.lines]
        self.health = next(((h[1], int(h[2])) for h in health if h), None)

    def _collect(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<exit>")
            self._changed.notify_all()

    def wait_line(self, pattern: str, timeout: float) -> re.Match:
        """The first output line matching `pattern`; AssertionError with the output when none comes."""
        found: list[re.Match] = []

        def seen():
            found[:] = [m for m in (re.search(pattern, line) for line in self.lines) if m][:1]
            return bool(found) or "<exit>" in self.lines
        with self._changed:
            self._changed.wait_for(seen, timeout)
        assert found, f"no line matching {pattern!r} in the cloud's output:\n" + "\n".join(self.lines[-30:])
        return found[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def baseline(sm, address, token=None, n: int = 5) -> float:
    """Median latency of a legitimate request on an undisturbed server (after one warm-up)."""
    ok, _ = legit_request(sm, address, token)
    assert ok, "the undisturbed server did not answer a legitimate request"
    runs = [legit_request(sm, address, token) for _ in range(n)]
    assert all(ok for ok, _ in runs)
    return statistics.median(t for _, t in runs)


def assert_normal(sm, address, base: float, token=None, tries: int = 3) -> None:
    """Every try is answered correctly by the cloud (no fallback), and the fastest within 2x baseline plus
    50 ms (the fastest of a few, plus a few scheduler quanta: on a busy 2-core host a ~12 ms request can
    take 30-40 ms without the server being at fault; a starved or wedged server misses by its 0.5 s+
    deadlines)."""
    runs = [legit_request(sm, address, token) for _ in range(tries)]
    assert all(ok for ok, _ in runs), "a legitimate request was not answered by the cloud"
    best = min(t for _, t in runs)
    assert best <= 2 * base + 0.05, f"a legitimate request took {best * 1e3:.1f} ms, baseline {base * 1e3:.1f} ms"


# ----------------------------------------------------------------------------- frames
DIMS = (0, 1, 2, 3, 7, 63, 64, 65, 127, 128, 1 << 16, 1 << 31, (1 << 32) - 1)


def random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))


def structured_frame(rng: random.Random) -> bytes:
    """A frame with a valid magic, version and CRC but random kind, dtype, shape, ids and payload
    (matching dtype x shape when that is small, so deeper checks are reached)."""
    kind = rng.choice([*map(int, P.Kind), 0, 99, 255])
    dtype = rng.choice([*map(int, P.DType), 8, 200])
    ndim = rng.randrange(0, 6)
    shape = [rng.choice(DIMS) if i < ndim or rng.random() < 0.3 else 0 for i in range(4)]
    try:
        want = P.expected_payload(P.DType(dtype), tuple(shape[:ndim]))
    except (ValueError, P.FrameError):
        want = None
    n = want if want is not None and want <= 4096 and rng.random() < 0.8 else rng.randrange(0, 300)
    payload = bytes(rng.getrandbits(8) for _ in range(n))
    if rng.random() < 0.3 and n:            # NaN / Inf patterns in float payloads
        payload = (b"\x7e\x00" * n)[:n] if rng.random() < 0.5 else (b"\x00\x7c" * n)[:n]
    rid, seq = rng.choice([0, 7, (1 << 64) - 1]), rng.choice([0, 1, P.REPLAY])
    return _sealed(kind, dtype, ndim, rid, seq, shape, payload)


def _sealed(kind, dtype, ndim, rid, seq, shape, payload) -> bytes:
    head = P.HEADER.pack(P.MAGIC, P.PROTOCOL_VERSION, kind, dtype, ndim, rid, seq, *shape, len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head[:-4] + crc.to_bytes(4, "big") + payload


def step_frame(rng: random.Random, d: int, rid: int) -> bytes:
    """A frame of request `rid` that is well formed on the wire (so it reaches the request checks):
    an activation or ids of a plausible shape, random bytes (NaN / Inf included) as its values."""
    kind = rng.choice([P.Kind.UP_H, P.Kind.UP_PA, P.Kind.UP_PF, P.Kind.IDS, P.Kind.REPLAY_END, P.Kind.CLOSE])
    dtype = rng.choice([P.DType.FP16, P.DType.INT8Q, P.DType.INT4Q, P.DType.I32])
    shape = (1, rng.randrange(1, 20), rng.choice([d - 1, d, d + 1])) if dtype != P.DType.I32 else (rng.randrange(1, 40),)
    n = P.expected_payload(dtype, shape)
    payload = bytes(rng.getrandbits(8) for _ in range(n))
    return _sealed(kind, dtype, len(shape), rid, rng.choice([0, 1, 2, P.REPLAY]), (*shape, 0, 0, 0)[:4], payload)


def open_frame(rng: random.Random, n_units: int, rid: int) -> bytes:
    """A valid or nearly valid OPEN of request `rid` (so that step frames after it reach the request checks)."""
    values = [rng.choice([0, 1, 2, 3]), rng.choice([0, 1, 2]), *(rng.randrange(2) for _ in range(n_units)),
              rng.choice([1, 4, 1 << 20])]
    return P.encode_frame(P.array_frame(P.Kind.OPEN, values, rid))
