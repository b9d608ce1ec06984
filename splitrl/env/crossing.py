"""One crossing of the link: its time under selective-repeat retransmissions, drawn or in expectation.
Pure JAX; `splitrl.env.cost` prices a request's crossings with it, `splitrl.env.sessions` a cache's move."""

from __future__ import annotations

import jax.numpy as jnp

from splitrl.env.fuse import last_axis_sum

R_MAX = 4            # static bound on retransmission rounds (params.channel.max_retx <= R_MAX)


def loss_powers(loss_p):
    """[..., R_MAX]: loss_p^r for r = 1..R_MAX, as products (a few ulps from `**`, which XLA's CPU backend
    runs as a scalar library call per element)."""
    loss_p = jnp.asarray(loss_p)
    squared = loss_p * loss_p
    return jnp.stack([loss_p, squared, squared * loss_p, squared * squared], -1)


def _rounds(nbytes, bw, rtt, loss_p, packet_bytes, max_retx):
    """(P(round r is needed), seconds of round r), r = 1..R_MAX, for selective-repeat ARQ over nbytes:
    round r is needed when some packet was lost in all r earlier sends, and costs a retransmission
    timeout (one RTT) plus resending the lost share."""
    nbytes = jnp.asarray(nbytes)[..., None]
    n_pk = jnp.maximum(jnp.ceil(nbytes / packet_bytes), 1.0)
    r = jnp.arange(1, R_MAX + 1, dtype=jnp.float32)
    lost_r = loss_powers(loss_p)
    # (1 − p^r)^n as exp(n log(1 − p^r)): vectorised exp and log, and one log per round for every crossing
    needed = jnp.where(r <= max_retx, 1.0 - jnp.exp(n_pk * jnp.log(1.0 - lost_r)), 0.0)
    return needed, rtt + lost_r * nbytes / bw


def _time(nbytes, bw, rtt, happens, cost):
    """RTT/2 + bytes/bandwidth + the rounds that happen (0 when nothing is sent)."""
    nbytes = jnp.asarray(nbytes)
    return jnp.where(nbytes > 0, rtt / 2 + nbytes / bw + last_axis_sum(happens * cost), 0.0)


def _std(needed, cost):
    """Standard deviation of the retransmission time. Rounds are nested (round s happens only after every
    round r < s), so Cov(round r, round s) = P(s)(1 − P(r)) for r <= s and the variance is
    Σ_s P(s) c_s [c_s (1 − P(s)) + 2 Σ_{r<s} c_r (1 − P(r))]: a chain of adds of non-negative terms
    (no 4x4 dot, and no E[T²] − E[T]² that cancels when the rounds are near certain)."""
    var, before = 0.0, 0.0
    for k in range(R_MAX):
        missed = cost[..., k] * (1.0 - needed[..., k])
        var = var + needed[..., k] * cost[..., k] * (missed + 2.0 * before)
        before = before + missed
    return jnp.sqrt(var)


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
