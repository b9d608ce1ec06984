"""The observation contract: every feature a policy sees, the raw quantity it comes from, and how that
quantity is normalised. One definition for three users, so they cannot drift apart:

- the env (`SplitEnv.get_obs`) evaluates `evaluate(FEATURES, *normalisers(params, L), raw, jnp)`;
- `splitrl-export` writes `FEATURES` with the scenario's numbers (`spec`) into the ONNX metadata;
- the edge runtime (`splitrl.runtime.policy`) evaluates the same `evaluate` on what the edge measures,
  with the spec read back from that metadata (so an old policy keeps the normalisation it was trained
  with, and a new constant here reaches the edge through the next export).

    feature_i = clip((T_i(raw[source_i]) − shift_i) · scale_i, −FEATURE_BOUND, FEATURE_BOUND)

T is the identity, `log`, or `onehot` (1 where raw == index). Shifts and scales come from the
scenario's parameters (`normalisers`), so every feature is O(1) for every scenario. This module
imports no JAX: `xp` is numpy or jax.numpy.

`cloud_wait` is the admission wait the cloud publishes (seconds, as of the end of the last slot) over
the channel's `timeout_s`: 0 for an idle cloud, 1 where a request would wait as long as the edge lets a
cloud request run before it resumes alone (so the feature's scale is the scale of the decision), and
clipped at FEATURE_BOUND like every feature (a queue of 10 timeouts says all there is to say). Linear
rather than log1p(wait / slot_s): the contract has no log1p transform, and a new transform would make
every runtime that reads older metadata refuse it. The single-device env publishes the expected
Erlang-C wait at its observed load (`cloud.expected_wait`), the fleet the queue W / C (docs/fleet.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

FEATURE_BOUND = 10.0      # a 0-Mbit/s outage must not blow up a network input
LOG_BW_SCALE = 0.5        # ±2 e-folds of bandwidth around the channel's typical log-bandwidth -> ±1
SNR_REF_DB = 20.0         # channel SNR (dB) that maps to 0 (analog-noise scenarios only, else 0)
SNR_SPAN_DB = 10.0        # ... and ±10 dB to ±1
ARRIVALS_SPAN = 10.0      # expected arrivals per slot that map to 1
EDGE_RATIO_SCALE = 0.25   # log(edge/cloud time per token): 20x slower -> 0.75, 400x -> 1.5
TRANSFORMS = ("linear", "log", "onehot")


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    source: str               # the raw quantity: unnormalised, what an edge device measures or knows
    transform: str = "linear"
    index: int = 0            # the category a one-hot feature marks


FEATURES: tuple[Feature, ...] = (
    Feature("log_bw_est", "bw_est", "log"),        # bytes/s: the bandwidth estimate for the coming slot
    Feature("rtt", "rtt"),                          # s: last slot's round-trip time
    Feature("loss_p", "loss_p"),                    # packet-loss probability
    Feature("snr", "snr_db"),                       # dB
    Feature("cloud_load", "cloud_load"),            # the cloud's utilisation in [0, 1)
    Feature("cloud_wait", "cloud_wait_est"),        # s: the cloud's published admission wait, / timeout_s
    Feature("connected", "connected"),              # 1: the cloud was reachable in the last slot
    Feature("backlog", "backlog"),                  # requests waiting
    Feature("z_energy", "z_energy"),                # Lyapunov virtual queues (normalised units)
    Feature("z_acc", "z_acc"),
    Feature("prompt_len", "prompt_len"),            # tokens of the coming request
    Feature("output_len", "output_len"),
    Feature("last_boundary", "last_boundary"),      # the last partition
    Feature("last_fp16", "last_fmt", "onehot", 0),
    Feature("last_int8", "last_fmt", "onehot", 1),
    Feature("last_int4", "last_fmt", "onehot", 2),
    Feature("last_edge_frac", "last_edge_frac"),
    Feature("time", "time"),                        # slot index in the episode
    Feature("load", "arrivals_per_slot"),           # expected arrivals per slot (the scenario's load)
)
# Where the edge heats and throttles (splitrl/env/heat.py), it also reports its temperature, as a phone's
# thermal API or a board's sensor does: 0 at the governor's throttle point, 1 at its limit.
HEAT_FEATURES: tuple[Feature, ...] = (Feature("temp", "temp_c"),)
# Where requests are turns of conversations, the edge knows how much of the conversation is cached and
# where that cache lives (what moving the split would cost): over the model's context, over its layers.
SESSION_FEATURES: tuple[Feature, ...] = (Feature("ctx_len", "ctx_len"), Feature("kv_split", "kv_split"))
# Where the edge runs on a battery: its charge (0 at the floor, 1 at the top of the starting range) and Z_B.
BATTERY_FEATURES: tuple[Feature, ...] = (Feature("soc", "soc"), Feature("z_battery", "z_battery"))
# Where devices of several kinds share one policy (a fleet), each knows how slow it is: its whole-model
# decode time per token over the cloud's, from its own cost tables (a device reads its own profile, so
# the runtime exports it with the policy). Without it a Jetson and a phone look alike to the policy.
DEVICE_FEATURES: tuple[Feature, ...] = (Feature("edge_ratio", "edge_cloud_ratio", "log"),)
NAMES = tuple(f.name for f in FEATURES)
SOURCES = tuple(dict.fromkeys(f.source for f in FEATURES))


def contract(heat: bool = False, sessions: bool = False, battery: bool = False,
             device: bool = False) -> tuple[Feature, ...]:
    """The features of an env: FEATURES, then HEAT_FEATURES where the edge heats, SESSION_FEATURES where
    requests are turns of conversations, BATTERY_FEATURES where the edge runs on a battery,
    DEVICE_FEATURES where one policy serves devices of several kinds (a fleet)."""
    return (FEATURES + (HEAT_FEATURES if heat else ()) + (SESSION_FEATURES if sessions else ())
            + (BATTERY_FEATURES if battery else ()) + (DEVICE_FEATURES if device else ()))


def sources(features: Sequence[Feature]) -> tuple[str, ...]:
    """The raw quantities `features` read, each once."""
    return tuple(dict.fromkeys(f.source for f in features))


def normalisers(params, n_layers: int, xp=np, features: Sequence[Feature] = FEATURES):
    """(shift f32[F], scale f32[F]) of every feature in `features` order, from a scenario's EnvParams
    (traced or concrete: this runs inside the env's step)."""
    c, w, r = params.channel, params.workload, params.reward
    one = xp.ones((), xp.float32)
    zero = 0.0 * one
    by_name = {
        "log_bw_est": (c.bw_log_mean, LOG_BW_SCALE * one),
        "rtt": (c.rtt_mean_s, 1.0 / c.rtt_mean_s),
        # a request that would wait past timeout_s resumes on the edge: 1 is where waiting stops paying
        "cloud_wait": (zero, 1.0 / c.timeout_s),
        "snr": (SNR_REF_DB * one, c.noise_on / SNR_SPAN_DB),
        "backlog": (zero, 1.0 / w.q_max),
        "z_energy": (zero, 1.0 / r.z_max),
        "z_acc": (zero, 1.0 / r.z_max),
        "prompt_len": (zero, 1.0 / xp.max(w.prompt_hi)),
        "output_len": (zero, 1.0 / xp.max(w.output_hi)),
        "last_boundary": (zero, one / n_layers),
        "time": (zero, 1.0 / params.max_steps_in_episode),
        "load": (zero, one / ARRIVALS_SPAN),
        "temp": (params.heat.throttle_c, 1.0 / xp.maximum(params.heat.limit_c - params.heat.throttle_c, 1e-6)),
        "ctx_len": (zero, 1.0 / params.session.max_ctx),
        "kv_split": (zero, one / n_layers),
        "soc": (params.battery.floor, 1.0 / xp.maximum(params.battery.start_hi - params.battery.floor, 1e-6)),
        "z_battery": (zero, 1.0 / r.z_max),
        "edge_ratio": (zero, EDGE_RATIO_SCALE * one),
    }
    pairs = [by_name.get(f.name, (zero, one)) for f in features]
    return (xp.stack([xp.asarray(s, xp.float32) for s, _ in pairs]),
            xp.stack([xp.asarray(k, xp.float32) for _, k in pairs]))


def evaluate(features: Sequence[Feature], shift, scale, raw: Mapping, xp=np, bound: float = FEATURE_BOUND):
    """The features f32[..., F] from raw quantities ({source: value of shape [...]}); the one function of
    the contract."""
    cols = []
    for f in features:
        x = xp.asarray(raw[f.source], xp.float32)
        if f.transform == "log":
            x = xp.log(x)
        elif f.transform == "onehot":
            x = (x == f.index).astype(xp.float32)
        cols.append(x)
    return xp.clip((xp.stack(cols, axis=-1) - shift) * scale, -bound, bound).astype(xp.float32)


def value(name: str, x, params, n_layers: int, xp=np):
    """One feature, normalised and clipped, from its raw value (for learners that see a subset)."""
    f = next(f for f in FEATURES + HEAT_FEATURES + SESSION_FEATURES + BATTERY_FEATURES + DEVICE_FEATURES
             if f.name == name)
    shift, scale = normalisers(params, n_layers, xp, (f,))
    return evaluate((f,), shift, scale, {f.source: x}, xp)[..., 0]


# ----------------------------------------------------------------------------- as data (ONNX metadata)
def spec(shift, scale, features: Sequence[Feature] = FEATURES) -> list[dict]:
    """`features` with one scenario's numbers, as JSON-able dicts (what export writes)."""
    return [dataclasses.asdict(f) | {"shift": float(s), "scale": float(k)}
            for f, s, k in zip(features, np.asarray(shift), np.asarray(scale), strict=True)]


def from_spec(rows: Sequence[Mapping]) -> tuple[tuple[Feature, ...], np.ndarray, np.ndarray]:
    """(features, shift, scale) from `spec` rows; raises ValueError naming the row at fault."""
    feats, shift, scale = [], [], []
    for i, row in enumerate(rows):
        try:
            f = Feature(str(row["name"]), str(row["source"]), str(row["transform"]), int(row["index"]))
            s, k = float(row["shift"]), float(row["scale"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"feature {i}: {row!r} is not a feature spec ({e}); re-export the policy") from e
        if f.transform not in TRANSFORMS or not (np.isfinite(s) and np.isfinite(k)):
            raise ValueError(f"feature {i} ({f.name}): transform {f.transform!r} or numbers {s}, {k} are invalid; "
                             f"transforms are {TRANSFORMS}; re-export the policy")
        feats.append(f)
        shift.append(s)
        scale.append(k)
    return tuple(feats), np.asarray(shift, np.float32), np.asarray(scale, np.float32)
