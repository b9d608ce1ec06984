"""Channel processes for one slot: bandwidth (three kinds), whether the cloud is reachable at all, RTT,
fading -> packet loss, SNR.

Every function takes pre-drawn standard normals/uniforms (the step draws all its random numbers
from one key split) and returns the next values; no Python control flow on traced values.
"""

from __future__ import annotations

import jax.numpy as jnp

from splitrl.env.types import ChannelParams

CHANNEL_KINDS = ("gauss_markov", "regime", "trace")
OUTAGE = 2   # the regime chain's outage regime: the link is down, not slow


def ar1(x, mean, rho, std, z):
    """Gauss-Markov step with stationary mean `mean` and stationary std `std`."""
    return mean + rho * (x - mean) + std * jnp.sqrt(1.0 - rho**2) * z


def next_regime(p: ChannelParams, regime, u):
    """Sample the next regime of the Markov chain by inverting the row's CDF with a uniform."""
    cdf = jnp.cumsum(p.regime_trans[regime])
    return jnp.minimum(jnp.sum(u > cdf), 2).astype(jnp.int32)


def trace_bandwidth(p: ChannelParams, pos):
    """Sample-and-hold replay of the trace at (fractional) position `pos`, wrapping around."""
    T = p.trace_bw.shape[0]
    return p.trace_bw[jnp.floor(pos).astype(jnp.int32) % T]


def loss_probability(h_th, log_sigma_h, xp=jnp):
    """Chen et al. eq. 4: P(h < h_th) for Rayleigh fading of scale sigma_h (xp: jax.numpy in the env,
    numpy on the host)."""
    sigma_h = xp.exp(log_sigma_h)
    return 1.0 - xp.exp(-(h_th**2) / (2.0 * sigma_h**2))


def next_bandwidth(kind: str, p: ChannelParams, log_bw, regime, trace_pos, z, u):
    """(bytes/s, new log latent, new regime, new trace position) for the coming slot."""
    if kind == "gauss_markov":
        log_bw = ar1(log_bw, p.bw_log_mean, p.bw_rho, p.bw_log_std, z)
        bw = jnp.exp(log_bw)
    elif kind == "regime":
        regime = next_regime(p, regime, u)
        log_bw = p.regime_log_mean[regime] + p.regime_log_std[regime] * z
        bw = jnp.exp(log_bw)
    elif kind == "trace":
        trace_pos = trace_pos + p.trace_step
        bw = trace_bandwidth(p, trace_pos)
        log_bw = jnp.log(jnp.maximum(bw, p.bw_min))
    else:  # checked on the host when the env is built
        raise ValueError(f"channel kind {kind!r} is unknown; choose one of {CHANNEL_KINDS}")
    return jnp.maximum(bw, p.bw_min), log_bw, regime, trace_pos


def link_up(kind: str, p: ChannelParams, up, regime, trace_pos, u):
    """(reachable this slot: 1.0 / 0.0, the link process's new state). A disconnection, not a slow link:
    the regime chain's outage regime, a trace's zero-throughput sample, or the two-state Markov link
    process (drops with p_drop a slot, comes back with p_restore) of any channel."""
    up = jnp.where(up > 0.5, u >= p.p_drop, u < p.p_restore).astype(jnp.float32)
    if kind == "regime":
        return up * (regime != OUTAGE), up
    if kind == "trace":
        return up * (trace_bandwidth(p, trace_pos) > 0), up
    return up, up


def rtt_of(p: ChannelParams, bw, z):
    """This slot's RTT: the base RTT's lognormal jitter plus the drain time of the bottleneck buffer at
    this bandwidth (a slow link is a long-delay link: bufferbloat)."""
    return p.rtt_mean_s * jnp.exp(p.rtt_log_std * z - 0.5 * p.rtt_log_std**2) + p.queue_bytes / bw
