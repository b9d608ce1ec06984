"""One crossing of the link: its time under selective-repeat retransmissions, drawn or in expectation.
Pure JAX; `splitrl.env.cost` prices a request's crossings with it, `splitrl.env.sessions` a cache's move."""

from __future__ import annotations

import jax.numpy as jnp

from splitrl.env.fuse import last_axis_sum

R_MAX = 4            # static bound on retransmission rounds (params.channel.max_retx <= R_MAX)


def _rounds(nbytes, bw, rtt, loss_p, packet_bytes, max_retx):
    """(P(round r is needed), seconds of round r), r = 1..R_MAX, for selective-repeat ARQ over nbytes:
    round r is needed when some packet was lost in all r earlier sends, and costs a retransmission
    timeout (one RTT) plus resending the lost share."""
    nbytes = jnp.asarray(nbytes)[..., None]
    n_pk = jnp.maximum(jnp.ceil(nbytes / packet_bytes), 1.0)
    r = jnp.arange(1, R_MAX + 1, dtype=jnp.float32)
    lost_r = loss_p ** r
    needed = jnp.where(r <= max_retx, 1.0 - (1.0 - lost_r) ** n_pk, 0.0)
    return needed, rtt + lost_r * nbytes / bw


def _time(nbytes, bw, rtt, happens, cost):
    """RTT/2 + bytes/bandwidth + the rounds that happen (0 when nothing is sent)."""
    nbytes = jnp.asarray(nbytes)
    return jnp.where(nbytes > 0, rtt / 2 + nbytes / bw + last_axis_sum(happens * cost), 0.0)


def _std(needed, cost):
    """Standard deviation of the retransmission time (rounds are nested: P(r and s) = P(max))."""
    both = needed[..., jnp.maximum(jnp.arange(R_MAX)[:, None], jnp.arange(R_MAX)[None, :])]   # [.., R, R]
    second = jnp.einsum("...rs,...r,...s->...", both, cost, cost)
    return jnp.sqrt(jnp.maximum(second - last_axis_sum(needed * cost) ** 2, 0.0))


def transfer_time(nbytes, bw, rtt, loss_p, packet_bytes, max_retx, u=None):
    """One-way time of `nbytes` (any shape): RTT/2 + bytes/bandwidth + retransmission rounds, drawn with
    the uniforms `u` (the rounds needed are the max of the packets' geometric losses: round r happens
    iff u < P(round r needed), a nested set), or their expectation when `u` is None. 0 when nothing is sent."""
    needed, cost = _rounds(nbytes, bw, rtt, loss_p, packet_bytes, max_retx)
    happens = needed if u is None else (jnp.asarray(u)[..., None] < needed).astype(jnp.float32)
    return _time(nbytes, bw, rtt, happens, cost)


def rounds_std(nbytes, bw, rtt, loss_p, packet_bytes, max_retx):
    """Standard deviation of one crossing's retransmission time."""
    return _std(*_rounds(nbytes, bw, rtt, loss_p, packet_bytes, max_retx))


def crossings(nbytes, bw, rtt, loss_p, packet_bytes, max_retx, u, std_of: int):
    """(time drawn with the uniforms `u`, expected time) of each of `nbytes` [n], and the standard deviation
    of the retransmission time of `nbytes[std_of]`, from one evaluation of the rounds (their powers are
    most of a crossing's cost)."""
    needed, cost = _rounds(nbytes, bw, rtt, loss_p, packet_bytes, max_retx)
    drawn = _time(nbytes, bw, rtt, (jnp.asarray(u)[..., None] < needed).astype(jnp.float32), cost)
    return drawn, _time(nbytes, bw, rtt, needed, cost), _std(needed[std_of], cost[std_of])
