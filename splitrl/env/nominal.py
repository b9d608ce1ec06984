"""Nominal conditions of a scenario, on the host: the typical request and the channel and cloud at their
stationary values. The reward's normalisers (`splitrl.env.scenario.nominal_refs`) and the offline
planners (static split, SplitLLM's DP) price placements at these.

Bandwidth has two summaries, named by what they are for:
  "mean"     the stationary mean in bytes/s (what a planner that budgets throughput expects):
             Gauss-Markov exp(μ + σ²/2), regime chain Σ π_k exp(μ_k + σ_k²/2), trace: the mean sample;
  "typical"  a typical slot (what normalisers should make O(1)): Gauss-Markov exp(μ) (the median),
             regime chain exp(Σ π_k μ_k) (the geometric mean), trace: the median sample.
π is the regime chain's stationary distribution. Loss is at the median fading scale, RTT, SNR and
cloud load at their means.
"""

from __future__ import annotations

import math

import numpy as np

from splitrl.env.channel import loss_probability
from splitrl.env.cloud import expected_wait
from splitrl.env.tables import CostArrays
from splitrl.env.types import Conditions, EnvParams, WorkloadParams

BANDWIDTH_SUMMARIES = ("mean", "typical")


def stationary_regimes(trans) -> np.ndarray:
    """The stationary distribution π of a regime transition matrix (π = π P, Σ π = 1)."""
    vals, vecs = np.linalg.eig(np.asarray(trans).T)
    pi = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    return pi / pi.sum()


def bandwidth(kind: str, params: EnvParams, summary: str) -> float:
    """The channel's stationary bandwidth in bytes/s, by `summary` (module docstring)."""
    if summary not in BANDWIDTH_SUMMARIES:
        raise ValueError(f"bandwidth summary {summary!r}: must be one of {BANDWIDTH_SUMMARIES}")
    p = params.channel
    if kind == "trace":
        samples = np.maximum(np.asarray(p.trace_bw), float(p.bw_min))
        return float(np.mean(samples) if summary == "mean" else np.median(samples))
    if kind == "regime":
        pi, mu = stationary_regimes(p.regime_trans), np.asarray(p.regime_log_mean)
        if summary == "mean":
            return float(np.dot(pi, np.exp(mu + np.asarray(p.regime_log_std) ** 2 / 2)))
        return float(np.exp(np.dot(pi, mu)))
    if summary == "mean":
        return float(np.exp(float(p.bw_log_mean) + float(p.bw_log_std) ** 2 / 2))
    return float(np.exp(p.bw_log_mean))


def mean_request(w: WorkloadParams) -> tuple[float, float]:
    """(prompt, output) tokens of the mean request over the workload's classes."""
    probs = np.asarray(w.class_probs)
    prompt = float(np.dot(probs, (np.asarray(w.prompt_lo) + np.asarray(w.prompt_hi)) / 2))
    output = float(np.dot(probs, (np.asarray(w.output_lo) + np.asarray(w.output_hi)) / 2))
    return prompt, output


def nominal(kind: str, params: EnvParams, bandwidth_summary: str = "mean") -> tuple[float, float, Conditions]:
    """(prompt, output, Conditions) of the mean request in the nominal channel and cloud (floats)."""
    p = params.channel
    prompt, output = mean_request(params.workload)
    load = float(params.cloud.load_mean)
    cond = Conditions(bw=bandwidth(kind, params, bandwidth_summary), rtt=float(p.rtt_mean_s),
                      loss_p=loss_probability(float(p.h_th), float(p.fade_log_mean), xp=math),
                      snr_db=float(p.snr_db_mean), cloud_load=load,
                      cloud_wait=float(expected_wait(params.cloud, load)), connected=1.0, reconnect=0.0)
    return prompt, output, cond


def _cloud_totals(costs: CostArrays, prompt: float, output: float) -> tuple[float, float]:
    """(prefill s/token, decode s/token) of the whole model on the cloud at the request's contexts."""
    m, grid = costs.model(), costs.ctx_grid
    per_token = np.asarray(m.cloud_embed) + np.asarray(m.cloud_all)   # [2 phases, G]
    return (float(np.interp(prompt, grid, per_token[0])),
            float(np.interp(prompt + output / 2, grid, per_token[1]) + np.interp(prompt + output / 2, grid,
                                                                                  np.asarray(m.cloud_head)[1])))


def cloud_service_s(costs: CostArrays, prompt: float, output: float) -> float:
    """Seconds a request like the mean one holds a cloud slot: its prefill, then one decode step a token."""
    pre, dec = _cloud_totals(costs, prompt, output)
    return prompt * pre + output * dec


def batch_knee(costs: CostArrays, prompt: float, output: float) -> float:
    """B* = decode s/token over prefill s/token on the cloud: memory time over compute time per token, the
    batch at which a decode step turns compute-bound (at least 1)."""
    pre, dec = _cloud_totals(costs, prompt, output)
    return max(dec / max(pre, 1e-12), 1.0)
