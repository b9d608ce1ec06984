"""The sections of a scenario file, each read by one checked function: the link (`channel`), the
requests (`workload`), the shared cloud's engine and load (`serving`), the reward. Every key must be
read and every number is range-checked: a bad value raises `ScenarioError` naming the file and the
field (`Checked`). `splitrl.env.scenario` assembles them into an env."""

from __future__ import annotations

import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from splitrl.env.channel import CHANNEL_KINDS
from splitrl.env.cloud import LOAD_KINDS, clipped_means, kv_slots, load_trace_shape, read_workload, wait_table
from splitrl.env.crossing import R_MAX
from splitrl.env.nominal import batch_knee, cloud_service_s
from splitrl.env.nominal import mean_request as nominal_mean_request
from splitrl.env.tables import CostArrays
from splitrl.env.types import (
    BatteryParams,
    ChannelParams,
    CloudParams,
    HeatParams,
    RewardParams,
    SessionParams,
    WorkloadParams,
)
from splitrl.profiles.store import data_root

MBPS = 1e6 / 8  # bytes/s per Mbit/s


class ScenarioError(ValueError):
    pass


class Checked:
    """Checked access to a scenario mapping: every key must be read, values are range-checked."""

    def __init__(self, data: dict, where: str, prefix: str = ""):
        if not isinstance(data, dict):
            raise ScenarioError(f"{where}: {prefix or 'scenario'} must be a mapping, got {type(data).__name__}")
        self.data, self.where, self.prefix, self.seen = data, where, prefix, set()

    def err(self, key, value, expected) -> ScenarioError:
        return ScenarioError(f"{self.where}: {self.prefix}{key} = {value!r}: {expected}")

    def get(self, key, lo=None, hi=None, kind=float, lo_open=False):
        self.seen.add(key)
        if key not in self.data:
            raise self.err(key, None, "missing required field")
        v = self.data[key]
        if kind is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise self.err(key, v, "must be a finite number")
            v = float(v)
            if lo is not None and (v < lo or (lo_open and v == lo)):
                raise self.err(key, v, f"must be {'>' if lo_open else '>='} {lo}")
            if hi is not None and v > hi:
                raise self.err(key, v, f"must be <= {hi}")
        elif kind is int:
            if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo):
                raise self.err(key, v, f"must be an integer >= {lo}")
        elif kind is str:
            if not isinstance(v, str):
                raise self.err(key, v, "must be a string")
        elif kind is bool:
            if not isinstance(v, bool):
                raise self.err(key, v, "must be true or false")
        return v

    def pair(self, key, lo: float, hi: float, lo_name: str) -> list[float]:
        """A range [a, b] of two finite numbers with lo <= a <= b <= hi (`lo_name` says what lo is)."""
        self.seen.add(key)
        v = self.data.get(key)
        if (not isinstance(v, list) or len(v) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                or not lo <= v[0] <= v[1] <= hi):
            raise self.err(key, v, f"must be [lo, hi] with {lo_name} ({lo}) <= lo <= hi <= {hi}")
        return [float(x) for x in v]

    def sub(self, key) -> Checked:
        self.seen.add(key)
        if key not in self.data:
            raise self.err(key, None, "missing required section")
        return Checked(self.data[key], self.where, f"{self.prefix}{key}.")

    def done(self):
        unknown = set(self.data) - self.seen
        if unknown:
            k = sorted(unknown)[0]
            raise self.err(k, self.data[k], f"unknown field (known: {sorted(self.seen)})")


def load_trace(name: str, slot_s: float, where: str) -> tuple[np.ndarray, str]:
    """A bandwidth trace (time_s<TAB>Mbps, '#' comments) resampled onto the slot grid by
    sample-and-hold; returns (bytes/s per slot, provenance header)."""
    path = Path(name) if name.endswith(".tsv") else data_root() / "traces" / f"{name}.tsv"
    if not path.is_file():
        known = sorted(p.stem for p in (data_root() / "traces").glob("*.tsv"))
        raise ScenarioError(f"{where}: channel.trace.file = {name!r}: no such trace; known: {known}")
    header = " ".join(ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#"))
    data = np.loadtxt(path, comments="#", delimiter="\t", ndmin=2)
    if data.shape[1] != 2 or len(data) < 2 or not np.isfinite(data).all() or (data[:, 1] < 0).any():
        raise ScenarioError(f"{path}: must hold >= 2 rows of 'time_s<TAB>mbps' with mbps >= 0")
    t, mbps = data[:, 0] - data[0, 0], data[:, 1]
    grid = np.arange(0.0, t[-1], slot_s)
    idx = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)
    return (mbps[idx] * MBPS).astype(np.float32), header


def channel_section(c: Checked, slot_s: float) -> tuple[str, ChannelParams, dict]:
    """The link: bandwidth process, fading, noise, retransmissions, disconnections, delays."""
    kind = c.get("kind", kind=str)
    if kind not in CHANNEL_KINDS:
        raise c.err("kind", kind, f"must be one of {list(CHANNEL_KINDS)}")
    bandwidth, meta = _bandwidth(c, kind, slot_s)
    fd = c.sub("fading")
    h_th, sigma_h = fd.get("h_th", 0), fd.get("sigma_h", 0, lo_open=True)
    fade_rho, fade_std = fd.get("rho", 0, 0.999), fd.get("log_std", 0)
    fd.done()
    nz = c.sub("noise")
    noise_on = nz.get("enabled", kind=bool)
    snr_mean, snr_std = nz.get("snr_db_mean"), nz.get("snr_db_std", 0)
    nz.done()
    max_retx = c.get("max_retx", kind=int, lo=0)
    if max_retx > R_MAX:
        raise c.err("max_retx", max_retx, f"must be <= {R_MAX}")
    lk = c.sub("link")
    link = {"p_drop": lk.get("p_drop", 0, 1), "p_restore": lk.get("p_restore", 0, 1),
            "reconnect_s": lk.get("reconnect_s", 0), "detect_s": lk.get("detect_s", 0)}
    if link["p_drop"] > 0 and link["p_restore"] == 0:
        raise lk.err("p_restore", 0.0, "must be > 0 when p_drop > 0 (a link that never comes back)")
    lk.done()
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    params = ChannelParams(
        **bandwidth, bw_min=f32(c.get("min_mbps", 0, lo_open=True) * MBPS),
        bw_est_log_std=f32(c.get("estimate_log_std", 0)), rtt_mean_s=f32(c.get("rtt_ms", 0, lo_open=True) / 1e3),
        rtt_log_std=f32(c.get("rtt_log_std", 0)), h_th=f32(h_th), fade_log_mean=f32(math.log(sigma_h)),
        fade_rho=f32(fade_rho), fade_log_std=f32(fade_std), packet_bytes=f32(c.get("packet_bytes", 1, lo_open=True)),
        max_retx=f32(max_retx), timeout_s=f32(c.get("timeout_s", 0, lo_open=True)), noise_on=f32(float(noise_on)),
        snr_db_mean=f32(snr_mean), snr_db_std=f32(snr_std), queue_bytes=f32(c.get("queue_kb", 0) * 1e3),
        prefill_chunk=f32(c.get("prefill_chunk_tokens", kind=int, lo=0)),
        **{k: f32(v) for k, v in link.items()})
    c.done()
    return kind, params, meta


def _bandwidth(c: Checked, kind: str, slot_s: float) -> tuple[dict, dict]:
    """The bandwidth processes' ChannelParams fields (all three kinds are read and checked; `kind`
    picks the one the env runs) and the trace's provenance."""
    gm = c.sub("gauss_markov")
    mean_mbps, log_std, rho = gm.get("mean_mbps", 0, lo_open=True), gm.get("log_std", 0), gm.get("rho", 0, 0.999)
    gm.done()
    rg = c.sub("regime")
    rg.seen.update({"trans", "mean_mbps", "log_std"})
    trans = np.asarray(rg.data.get("trans"), dtype=np.float64)
    if trans.shape != (3, 3) or (trans < 0).any() or not np.allclose(trans.sum(1), 1, atol=1e-6):
        raise rg.err("trans", rg.data.get("trans"), "must be a 3x3 matrix of probabilities whose rows sum to 1")
    reg_mean = np.asarray(rg.data.get("mean_mbps"), dtype=np.float64)
    reg_std = np.asarray(rg.data.get("log_std"), dtype=np.float64)
    if reg_mean.shape != (3,) or (reg_mean <= 0).any():
        raise rg.err("mean_mbps", rg.data.get("mean_mbps"), "must be 3 positive numbers (good, degraded, outage)")
    if reg_std.shape != (3,) or (reg_std < 0).any():
        raise rg.err("log_std", rg.data.get("log_std"), "must be 3 numbers >= 0")
    rg.done()
    tr = c.sub("trace")
    trace_file = tr.data.get("file")
    tr.seen.add("file")
    meta = {}
    if kind == "trace":
        if not isinstance(trace_file, str):
            raise tr.err("file", trace_file, "must name a trace in splitrl/profiles_data/traces (kind: trace)")
        trace_bw, meta["trace"] = load_trace(trace_file, slot_s, tr.where)
        meta["trace_file"] = trace_file
    else:
        trace_bw = np.ones(1, np.float32)
    tr.done()
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return {"bw_log_mean": f32(math.log(mean_mbps * MBPS)), "bw_rho": f32(rho), "bw_log_std": f32(log_std),
            "regime_trans": f32(trans), "regime_log_mean": f32(np.log(reg_mean * MBPS)),
            "regime_log_std": f32(reg_std), "trace_bw": f32(trace_bw), "trace_step": f32(1.0)}, meta


def workload_section(c: Checked) -> tuple[WorkloadParams, int]:
    """The request classes and the arrival rate; also the longest request (prompt + output tokens)."""
    rate, q_max = c.get("arrival_rate", 0), c.get("q_max", 1)
    c.seen.add("classes")
    classes = c.data.get("classes")
    if not isinstance(classes, list) or not classes:
        raise c.err("classes", classes, "must be a non-empty list of request classes")
    probs, plo, phi, olo, ohi = [], [], [], [], []
    for i, k in enumerate(classes):
        kc = Checked(k, c.where, f"{c.prefix}classes[{i}].")
        kc.get("name", kind=str)
        probs.append(kc.get("prob", 0, 1))
        for key, lo_l, hi_l in (("prompt", plo, phi), ("output", olo, ohi)):
            kc.seen.add(key)
            v = kc.data.get(key)
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v) and 1 <= v[0] <= v[1]):
                raise kc.err(key, v, "must be [lo, hi] token counts with 1 <= lo <= hi")
            lo_l.append(v[0])
            hi_l.append(v[1])
        kc.done()
    if abs(sum(probs) - 1) > 1e-6:
        raise c.err("classes", probs, "class probabilities must sum to 1")
    c.done()
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    w = WorkloadParams(arrival_rate=f32(rate), class_probs=f32(probs), prompt_lo=f32(plo), prompt_hi=f32(phi),
                       output_lo=f32(olo), output_hi=f32(ohi), q_max=f32(q_max))
    return w, int(max(p + o for p, o in zip(phi, ohi, strict=True)))


def context_of(c: Checked, max_context: int) -> int:
    """KV-cache tokens reserved when checking which placements fit: `auto` is the workload's longest request."""
    c.seen.add("context")
    v = c.data.get("context")
    if v == "auto":
        return max_context
    return c.get("context", kind=int, lo=1)


def reward_section(rw: Checked) -> tuple[RewardParams, dict]:
    """The reward's weights, and its normalisers as written (numbers, or 'auto' to fill from the tables)."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    raw = {k: rw.data.get(k) for k in ("energy_budget_j", "lat_ref_s", "energy_ref_j", "acc_ref")}
    # optional: the cloud's price (absent: free, as in every scenario before it); its reference is auto
    # unless given
    w_cloud = rw.get("w_cloud", 0) if "w_cloud" in rw.data else 0.0
    raw["cloud_ref_s"] = rw.data.get("cloud_ref_s", "auto")
    reward = RewardParams(V=f32(rw.get("V", 0)), w_lat=f32(rw.get("w_lat", 0)), w_en=f32(rw.get("w_en", 0)),
                          w_acc=f32(rw.get("w_acc", 0)), w_fail=f32(rw.get("w_fail", 0)), energy_budget_j=f32(1.0),
                          acc_budget=f32(rw.get("acc_budget", 0)), lat_ref_s=f32(1.0), energy_ref_j=f32(1.0),
                          acc_ref=f32(1.0), z_max=f32(rw.get("z_max", 0, lo_open=True)),
                          scale=f32(rw.get("scale", 0, lo_open=True)), w_cloud=f32(w_cloud), cloud_ref_s=f32(1.0))
    for k, v in raw.items():
        rw.seen.add(k)
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise rw.err(k, v, "must be a positive number or 'auto'")
    rw.done()
    return reward, raw


def serving_section(c: Checked, model, device, weight_format: str, costs: CostArrays, workload: WorkloadParams,
             slot_s: float) -> tuple[str, CloudParams]:
    """The shared cloud's engine and background load (splitrl/env/cloud.py). The background requests are
    the trace's (clipped to the model's context) when the load replays one, else like this scenario's;
    `auto` sizes the engine's slots by the KV cache the cloud holds at their mean length, and their slot
    holding time and the decode batch knee from the cost tables."""
    ld = c.sub("load")
    kind = ld.get("kind", kind=str)
    if kind not in LOAD_KINDS:
        raise ld.err("kind", kind, f"must be one of {list(LOAD_KINDS)}")
    ld.seen.add("trace")
    prompt, output = nominal_mean_request(workload)
    trace = np.ones(1, np.float32)
    if kind == "trace":
        name = ld.data.get("trace")
        path = data_root() / "workloads" / f"{name}.csv"
        if not isinstance(name, str) or not path.is_file():
            known = sorted(p.stem for p in (data_root() / "workloads").glob("*.csv"))
            raise ld.err("trace", name, f"must name a workload in splitrl/profiles_data/workloads; known: {known}")
        seconds, prompts, outputs = read_workload(path)
        trace = load_trace_shape(seconds, slot_s / 60.0)
        prompt, output = clipped_means(prompts, outputs, model.max_context)
    slots, service_s = c.data.get("slots"), c.data.get("service_s")
    c.seen.update({"slots", "service_s"})
    if slots == "auto":   # PagedAttention allocates KV by the tokens a sequence holds: the mean request
        free = device.memory_bytes - float(model.total_params()) * model.bytes_per_param[weight_format]
        kv_per_token = float(np.sum(model.unit_kv_values_per_token())) * model.n_layers * model.kv_bytes_per_value
        slots = kv_slots(free, kv_per_token, int(prompt + output))
    else:
        slots = c.get("slots", kind=int, lo=1)
    service_s = cloud_service_s(costs, prompt, output) if service_s == "auto" else c.get("service_s", 0, lo_open=True)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    rho_grid, p_wait = wait_table(slots)
    params = CloudParams(slots=f32(slots), service_s=f32(service_s), batch_knee=f32(batch_knee(costs, prompt, output)),
                         wait_rho=f32(rho_grid), wait_p=f32(p_wait), load_mean=f32(ld.get("mean", 0.001, 0.99)),
                         load_rho=f32(ld.get("rho", 0, 0.999)), load_std=f32(ld.get("logit_std", 0)),
                         load_max=f32(ld.get("max", 0, 0.995)), load_trace=f32(trace))
    ld.done()
    c.done()
    return kind, params


# an env without heat: the edge stays at 25 C and is never throttled (splitrl/env/heat.py)
NO_HEAT = dict(ambient_c=25.0, start_lo_c=25.0, start_hi_c=25.0, r_th=0.0, tau_s=1.0, throttle_c=1e3, limit_c=1e3 + 1,
               min_speed=1.0)


def heat_section(c: Checked, device) -> tuple[bool, HeatParams]:
    """The optional `heat` section: whether the edge heats and throttles (its device file's `thermal`
    figures), in what room, from what starting temperature. Absent or `enabled: false`: no heat."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    if "heat" not in c.data:
        return False, HeatParams(**{k: f32(v) for k, v in NO_HEAT.items()})
    h = c.sub("heat")
    enabled = h.get("enabled", kind=bool)
    ambient = h.get("ambient_c", -40, 60)
    start = h.pair("start_c", ambient, 150.0, "ambient_c, °C")
    h.done()
    if not enabled:
        return False, HeatParams(**{k: f32(v) for k, v in NO_HEAT.items()})
    th = device.thermal
    if th is None:
        raise h.err("enabled", True, f"the edge device {device.name!r} has no `thermal` figures: add a thermal block to "
                    f"{device.path or device.name} (docs/environment.md, 'Heat') or set heat.enabled: false")
    if start[1] >= th.limit_c + 20:
        raise h.err("start_c", start, f"starts far above the device's limit_c = {th.limit_c} °C; start at most 20 K above it")
    return True, HeatParams(ambient_c=f32(ambient), start_lo_c=f32(start[0]), start_hi_c=f32(start[1]),
                            r_th=f32(th.r_th_k_per_w), tau_s=f32(th.tau_s), throttle_c=f32(th.throttle_c),
                            limit_c=f32(th.limit_c), min_speed=f32(th.min_speed))


MASK_POINTS = 8   # contexts at which a conversation's memory masks are computed (1/8 .. the whole window)


def session_section(c: Checked, model, costs: CostArrays, masks_at) -> tuple[bool, SessionParams]:
    """The optional `sessions` section: requests are turns of conversations, `turns_mean` of them on average
    (geometric), whose KV cache stays where each layer ran (splitrl/env/sessions.py `migration`). Absent or
    `enabled: false`: every request is a new conversation. `masks_at(tokens)` gives the edge's memory
    masks with that much KV cache: with sessions they are tabulated at MASK_POINTS contexts up to the
    model's window, so the masks follow a conversation's growing cache (`sessions.params_at`)."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    kv_bytes = 2.0 * model.n_kv_heads * model.head_dim * 2.0   # K and V, fp16, per token of one layer
    off = SessionParams(continue_p=f32(0.0), kv_bytes=f32(kv_bytes), max_ctx=f32(model.max_context),
                        mask_ctx=f32([float(model.max_context)]), boundary_masks=jnp.asarray(costs.boundary_mask[None]),
                        unit_masks=jnp.asarray(costs.unit_mask[None]))
    if "sessions" not in c.data:
        return False, off
    s = c.sub("sessions")
    enabled = s.get("enabled", kind=bool)
    turns = s.get("turns_mean", 1)
    s.done()
    if not enabled:
        return False, off
    points = np.unique(np.linspace(0, model.max_context, MASK_POINTS + 1)[1:].round().astype(int))
    masks = [masks_at(int(t)) for t in points]
    return True, off.replace(continue_p=f32(1.0 - 1.0 / turns), mask_ctx=f32(points),
                             boundary_masks=jnp.asarray(np.stack([m[0] for m in masks])),
                             unit_masks=jnp.asarray(np.stack([m[1] for m in masks])))


# an edge on mains power: its "battery" never drains (capacity 1e30 J) and never stops it
NO_BATTERY = dict(capacity_j=1e30, start_lo=1.0, start_hi=1.0, floor=0.0)


def battery_section(c: Checked, device) -> tuple[bool, BatteryParams]:
    """The optional `battery` section: the edge runs on its battery (`battery_wh` in its device file),
    starting at a charge in `start_soc` = [lo, hi]; at `floor` the phone stops on-device inference.
    Absent or `enabled: false`: mains power."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    off = BatteryParams(**{k: f32(v) for k, v in NO_BATTERY.items()})
    if "battery" not in c.data:
        return False, off
    b = c.sub("battery")
    enabled = b.get("enabled", kind=bool)
    floor = b.get("floor", 0, 1)
    start = b.pair("start_soc", floor, 1.0, "floor")
    if start[0] == floor:
        raise b.err("start_soc", start, f"must start above the floor ({floor}): at the floor the edge never runs")
    b.done()
    if not enabled:
        return False, off
    if device.battery_wh is None:
        raise b.err("enabled", True, f"the edge device {device.name!r} has no battery_wh: add it to "
                    f"{device.path or device.name} (with source.battery) or set battery.enabled: false")
    return True, BatteryParams(capacity_j=f32(device.battery_wh * 3600.0), start_lo=f32(start[0]),
                               start_hi=f32(start[1]), floor=f32(floor))
