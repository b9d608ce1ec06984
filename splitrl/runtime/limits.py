"""The cloud's bounds: connections, requests, sizes and deadlines, fitted to the descriptors it may open.

Every number a peer sends is checked against one of these before it is used (validate.py), and every
stage of serving has one of these deadlines, so no single client can hold the server's threads,
memory or model for longer than a bound it cannot change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource

from splitrl.runtime import protocol as P

log = logging.getLogger("splitrl.cloud")

DESCRIPTOR_RESERVE = 16     # descriptors kept free for files, the health port, logging, torch


@dataclasses.dataclass(frozen=True)
class Limits:
    max_conns: int = 32             # authenticated connections; one more is told "busy" and closed
    max_unauth: int = 16            # connections still in the handshake; a new one evicts the oldest
    max_sessions: int = 8           # requests holding KV caches at once (each can be large)
    max_conversations: int = 64     # chats whose caches are kept between turns (the least recent goes first)
    handshake_s: float = 5.0        # the whole handshake, from accept to OK
    read_s: float = 30.0            # the next frame of a request (or of an idle connection)
    step_s: float = 30.0            # one step: the wait for the model plus its compute
    session_ttl_s: float = 600.0    # a request's whole life on the cloud
    drain_s: float = 30.0           # graceful stop: how long in-flight requests may take to finish
    max_new: int = 1024             # tokens one request may ask for
    max_rows: int = 2048            # tokens in one step (a prefill)
    max_positions: int | None = None   # context length; None: the model's max_position_embeddings
    max_payload: int = P.DEFAULT_MAX_PAYLOAD

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and not v > 0:
                raise ValueError(f"limit {f.name} = {v}: must be > 0")


def open_descriptors() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:        # not Linux: assume a fresh process
        return 32


def fit_to_descriptors(limits: Limits) -> Limits:
    """Shrink the connection caps so that every connection the caps admit has a descriptor (with
    RLIMIT_NOFILE's soft limit), and log it: running out of descriptors must not be how the caps
    are found."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits
    room = soft - open_descriptors() - DESCRIPTOR_RESERVE
    if limits.max_conns + limits.max_unauth <= room:
        return limits
    unauth = max(1, room // 4)
    conns = max(1, room - unauth)
    log.warning("ulimit -n is %d: capping connections at %d authenticated + %d in the handshake (asked for %d + %d); "
                "raise the limit to serve more", soft, conns, unauth, limits.max_conns, limits.max_unauth)
    return dataclasses.replace(limits, max_conns=conns, max_unauth=unauth)
