"""The shared cloud that serves the split's cloud part: admission queueing for a batch slot and batched
decode, with a background load that is exogenous here (the fleet env makes it endogenous).

The serving engine decodes up to `slots` sequences together (continuous batching: Yu et al., "Orca",
OSDI 2022; Kwon et al., "vLLM", SOSP 2023). Background requests hold a slot for `service_s` seconds on
average, and occupy a share ρ(t) of the slots (the load process below).

Admission, once per request, before its prefill: an M/M/c queue with c = slots (Erlang C;
Kleinrock, "Queueing Systems", 1975):
    P(wait) = C(c, cρ),    wait | wait ~ Exponential(mean = service_s / (c (1 − ρ)))
sampled in the env's step; its expectation C · service_s / (c (1 − ρ)) is what a one-slot controller
plans with. A large engine barely queues until ρ nears 1, then the wait explodes: the knee of every
serving system's latency-load curve.

Decode: a memory-bound step streams the weights once for the whole batch, so up to the knee
B* = (decode s/token) / (prefill s/token) (memory time over compute time per token, the roofline of
Williams et al., CACM 2009) a step costs the same, then grows linearly:
    step(B) / step(1) = max(1, B / B*),    B = 1 + ρ (c − 1)
Prefill is left at its uncontended cost (an assumption: chunked prefill interleaves with the batch).

The load ρ(t): `ar1`, a logit-AR(1) around a mean (an assumption, its sensitivity is in
docs/environment.md), or `trace`, the shape of a real serving trace: the per-minute arrival rate of
the Azure LLM conversation trace (Patel et al., ISCA 2024; splitrl/profiles_data/workloads) over its
mean, times the mean load, replayed from a random minute per episode.
"""

from __future__ import annotations

import csv
import datetime
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from splitrl.env.interp import at, lerp_index
from splitrl.env.types import CloudParams

LOAD_KINDS = ("ar1", "trace")
MAX_SLOTS = 256          # vLLM's default max_num_seqs: the engine's batch limit when memory allows more
# the utilisation grid of the Erlang-C table: uniform to 0.9, then geometric towards 1 where C(c, cρ) bends
RHO_GRID = np.concatenate([np.linspace(0.0, 0.9, 37)[:-1], 1.0 - np.geomspace(0.1, 1e-3, 28)])


# ----------------------------------------------------------------------------- host side
def erlang_c(c: int, rho: float) -> float:
    """P(an arrival waits) in an M/M/c queue at utilisation rho < 1 (stable Erlang-B recursion)."""
    if rho <= 0.0:
        return 0.0
    a, b = c * rho, 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b / (1.0 - rho * (1.0 - b))


def wait_table(slots: int) -> tuple[np.ndarray, np.ndarray]:
    """(ρ grid, P(wait) on it) for `slots` servers, interpolated in the step."""
    return RHO_GRID.astype(np.float32), np.array([erlang_c(slots, r) for r in RHO_GRID], np.float32)


def kv_slots(free_bytes: float, kv_bytes_per_token: float, context: int) -> int:
    """Sequences of `context` tokens whose KV cache fits `free_bytes`, capped at MAX_SLOTS (at least 1)."""
    return int(max(1, min(MAX_SLOTS, math.floor(free_bytes / max(kv_bytes_per_token * context, 1.0)))))


def read_workload(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(arrival seconds from the first request, prompt tokens, output tokens) of a serving trace
    (TIMESTAMP, ContextTokens, GeneratedTokens: the Azure LLM inference trace's columns)."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    stamps = [datetime.datetime.fromisoformat(row["TIMESTAMP"][:26]) for row in rows]
    seconds = np.array([(t - stamps[0]).total_seconds() for t in stamps])
    return (seconds, np.array([int(r["ContextTokens"]) for r in rows], np.float64),
            np.array([int(r["GeneratedTokens"]) for r in rows], np.float64))


def load_trace_shape(seconds: np.ndarray, minutes_per_slot: float) -> np.ndarray:
    """The trace's arrival rate per slot over its mean (sample-and-hold of the per-minute counts; the
    last, partial minute is dropped)."""
    per_minute = np.bincount((seconds // 60).astype(int))[:-1].astype(np.float64)
    shape = per_minute / per_minute.mean()
    n_slots = max(int(len(shape) / minutes_per_slot), 2)
    return shape[np.minimum((np.arange(n_slots) * minutes_per_slot).astype(int), len(shape) - 1)].astype(np.float32)


def clip_lengths(prompt: np.ndarray, output: np.ndarray, max_context: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, output) tokens of each request clipped to the model's context: output first, kept whole up
    to the context, the prompt truncated to what is left (its oldest tokens dropped)."""
    out = np.minimum(output, max_context - 1)
    return np.minimum(prompt, max_context - out), out


def clipped_means(prompt: np.ndarray, output: np.ndarray, max_context: int) -> tuple[float, float]:
    """Mean (prompt, output) tokens with every request clipped to the model's context (`clip_lengths`)."""
    prompt, out = clip_lengths(prompt, output, max_context)
    return float(prompt.mean()), float(out.mean())


# ----------------------------------------------------------------------------- in the step (pure JAX)
def expected_wait(c: CloudParams, load):
    """E[admission wait] in seconds at utilisation `load`: C(c, c·load) · service_s / (c (1 − load))."""
    p_wait = at(c.wait_p, lerp_index(c.wait_rho, load))
    return p_wait * c.service_s / (c.slots * jnp.maximum(1.0 - load, 1e-3))


def sample_wait(c: CloudParams, load, u_wait, u_len):
    """One admission wait: waits with probability C(c, c·load), then for an exponential time."""
    p_wait = at(c.wait_p, lerp_index(c.wait_rho, load))
    mean = c.service_s / (c.slots * jnp.maximum(1.0 - load, 1e-3))
    return jnp.where(u_wait < p_wait, -jnp.log(u_len) * mean, 0.0)


def decode_factor(c: CloudParams, load):
    """Decode step time with the background batch over the step time alone: max(1, B / B*)."""
    return jnp.maximum(1.0, (1.0 + load * (c.slots - 1.0)) / c.batch_knee)


def next_load(kind: str, c: CloudParams, logit, pos, z):
    """(load in [0, max], new logit latent, new trace position) for the coming slot."""
    if kind == "trace":
        pos = pos + 1.0
        shape = c.load_trace[jnp.floor(pos).astype(jnp.int32) % c.load_trace.shape[0]]
        return jnp.minimum(c.load_mean * shape, c.load_max), logit, pos
    mean_logit = jnp.log(c.load_mean) - jnp.log1p(-c.load_mean)
    logit = mean_logit + c.load_rho * (logit - mean_logit) + c.load_std * jnp.sqrt(1.0 - c.load_rho**2) * z
    return jnp.minimum(1.0 / (1.0 + jnp.exp(-logit)), c.load_max), logit, pos
