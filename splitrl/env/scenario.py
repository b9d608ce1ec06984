"""Scenarios: a YAML file (splitrl/conf/scenario/*.yaml) -> a checked (SplitEnv, EnvParams) pair.

`make("default")`, `make("path/to/my_scenario.yaml")` or `make(dict)`; the schema is documented in
docs/environment.md and every shipped scenario is an example. All checks run on the host, before jit:
a bad number raises `ScenarioError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from splitrl.env.channel import CHANNEL_KINDS
from splitrl.env.cloud import LOAD_KINDS, clipped_means, kv_slots, load_trace_shape, read_workload, wait_table
from splitrl.env.cost import R_MAX, request_cost
from splitrl.env.nominal import batch_knee, cloud_service_s, nominal
from splitrl.env.nominal import mean_request as nominal_mean_request
from splitrl.env.split_env import SplitEnv
from splitrl.env.tables import CostArrays, build_cost_arrays, build_ppl_arrays, layer_row_offsets
from splitrl.env.types import (
    ChannelParams,
    CloudParams,
    Conditions,
    CostParams,
    EnvParams,
    PPLParams,
    RadioParams,
    RewardParams,
    WorkloadParams,
)
from splitrl.profiles import load_costs, load_device, load_model, load_ppl
from splitrl.profiles.formats import WEIGHT_FORMATS
from splitrl.profiles.store import data_root
from splitrl.resources import config_dir

SCENARIO_DIR = config_dir() / "scenario"
MBPS = 1e6 / 8  # bytes/s per Mbit/s


class ScenarioError(ValueError):
    pass


class _Cfg:
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

    def sub(self, key) -> _Cfg:
        self.seen.add(key)
        if key not in self.data:
            raise self.err(key, None, "missing required section")
        return _Cfg(self.data[key], self.where, f"{self.prefix}{key}.")

    def done(self):
        unknown = set(self.data) - self.seen
        if unknown:
            k = sorted(unknown)[0]
            raise self.err(k, self.data[k], f"unknown field (known: {sorted(self.seen)})")


def load_scenario_dict(scenario: str | Path | dict) -> tuple[dict, str]:
    """The scenario mapping and a label for error messages."""
    if isinstance(scenario, dict):
        return scenario, "<scenario dict>"
    path = Path(scenario)
    if path.suffix not in (".yaml", ".yml"):
        path = SCENARIO_DIR / f"{scenario}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
            raise ScenarioError(f"scenario {scenario!r} is unknown; known: {known} (or give a path to a YAML file)")
    if not path.is_file():
        raise ScenarioError(f"scenario file {path} does not exist")
    return yaml.safe_load(path.read_text()), str(path)


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


def _channel(c: _Cfg, slot_s: float) -> tuple[str, ChannelParams, dict]:
    kind = c.get("kind", kind=str)
    if kind not in CHANNEL_KINDS:
        raise c.err("kind", kind, f"must be one of {list(CHANNEL_KINDS)}")
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
        bw_log_mean=f32(math.log(mean_mbps * MBPS)), bw_rho=f32(rho), bw_log_std=f32(log_std),
        regime_trans=f32(trans), regime_log_mean=f32(np.log(reg_mean * MBPS)), regime_log_std=f32(reg_std),
        trace_bw=f32(trace_bw), trace_step=f32(1.0), bw_min=f32(c.get("min_mbps", 0, lo_open=True) * MBPS),
        bw_est_log_std=f32(c.get("estimate_log_std", 0)), rtt_mean_s=f32(c.get("rtt_ms", 0, lo_open=True) / 1e3),
        rtt_log_std=f32(c.get("rtt_log_std", 0)), h_th=f32(h_th), fade_log_mean=f32(math.log(sigma_h)),
        fade_rho=f32(fade_rho), fade_log_std=f32(fade_std), packet_bytes=f32(c.get("packet_bytes", 1, lo_open=True)),
        max_retx=f32(max_retx), timeout_s=f32(c.get("timeout_s", 0, lo_open=True)), noise_on=f32(float(noise_on)),
        snr_db_mean=f32(snr_mean), snr_db_std=f32(snr_std), queue_bytes=f32(c.get("queue_kb", 0) * 1e3),
        prefill_chunk=f32(c.get("prefill_chunk_tokens", kind=int, lo=0)),
        **{k: f32(v) for k, v in link.items()})
    c.done()
    return kind, params, meta


def _workload(c: _Cfg) -> tuple[WorkloadParams, int]:
    """The request classes and the arrival rate; also the longest request (prompt + output tokens)."""
    rate, q_max = c.get("arrival_rate", 0), c.get("q_max", 1)
    c.seen.add("classes")
    classes = c.data.get("classes")
    if not isinstance(classes, list) or not classes:
        raise c.err("classes", classes, "must be a non-empty list of request classes")
    probs, plo, phi, olo, ohi = [], [], [], [], []
    for i, k in enumerate(classes):
        kc = _Cfg(k, c.where, f"{c.prefix}classes[{i}].")
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


def _to_params(arrays) -> dict:
    return {f.name: jnp.asarray(getattr(arrays, f.name)) for f in dataclasses.fields(arrays)
            if isinstance(getattr(arrays, f.name), np.ndarray)}


@dataclasses.dataclass(frozen=True)
class ScenarioInfo:
    """What a scenario was built from (for logs, checkpoints and the ONNX metadata)."""
    id: str
    model: str
    edge: str
    cloud: str
    edge_weight_format: str
    cost_sources: tuple
    ppl_source: str
    trace: str
    refs: dict
    costs: CostArrays       # the env's cost tables on the host, decodable (`layer()`, `model()`, `memory`)
    context: int            # KV-cache tokens reserved in the memory masks


def make(scenario: str | Path | dict = "default") -> tuple[SplitEnv, EnvParams]:
    """Build (env, default params) of a scenario by name, YAML path or mapping."""
    env, params, _ = make_with_info(scenario)
    return env, params


def make_with_info(scenario: str | Path | dict = "default") -> tuple[SplitEnv, EnvParams, ScenarioInfo]:
    data, where = load_scenario_dict(scenario)
    c = _Cfg(data, where)
    sid = c.get("id", kind=str)
    model = load_model(c.get("model", kind=str))
    edge, cloud_dev = load_device(c.get("edge", kind=str)), load_device(c.get("cloud", kind=str))
    wf, cwf = c.get("edge_weight_format", kind=str), c.get("cloud_weight_format", kind=str)
    for key, v in (("edge_weight_format", wf), ("cloud_weight_format", cwf)):
        if v not in WEIGHT_FORMATS:
            raise c.err(key, v, f"must be one of {list(WEIGHT_FORMATS)}")
    workload, max_context = _workload(c.sub("workload"))
    context = _context(c, max_context)
    kind = c.get("table_kind", kind=str)
    et, ct = load_costs(model, edge.name, wf, kind), load_costs(model, cloud_dev.name, cwf, kind)
    costs = build_cost_arrays(model, edge, cloud_dev, et, ct, context)
    ppl_model = load_model(c.get("ppl_table", kind=str))
    ppl = build_ppl_arrays(load_ppl(ppl_model), ppl_model, model)
    slot_s = c.get("slot_s", 0, lo_open=True)
    steps = c.get("episode_slots", kind=int, lo=1)
    ch_kind, channel, meta = _channel(c.sub("channel"), slot_s)
    load_kind, cloud_params = _serving(c.sub("serving"), model, cloud_dev, cwf, costs, workload, slot_s)
    reward, rw_raw = _reward(c.sub("reward"))
    c.done()
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    cost_params = CostParams(**_to_params(costs), power_active_w=f32(edge.power_active_w),
                             power_idle_w=f32(edge.power_idle_w))
    rd = edge.radio
    radio = RadioParams(transfer_w=f32(rd.transfer_w), tx_j_per_mbit=f32(rd.tx_w_per_mbps),
                        rx_j_per_mbit=f32(rd.rx_w_per_mbps), connected_w=f32(rd.connected_w), tail_w=f32(rd.tail_w),
                        tail_s=f32(rd.tail_s), promotion_w=f32(rd.promotion_w), promotion_s=f32(rd.promotion_s))
    ppl_params = PPLParams(loss_grid=f32(ppl.loss_grid), snr_grid=f32(ppl.snr_grid),
                           rows=f32(np.concatenate([ppl.fmt, ppl.loss, ppl.snr], axis=1)))
    params = EnvParams(channel=channel, workload=workload, cloud=cloud_params, costs=cost_params, radio=radio,
                       ppl=ppl_params,
                       reward=reward, slot_s=f32(slot_s), max_steps_in_episode=jnp.asarray(steps, jnp.int32))
    refs = nominal_refs(params, ch_kind)
    params = params.replace(reward=reward.replace(
        **{k: f32(refs[k] if rw_raw[k] == "auto" else rw_raw[k]) for k in rw_raw}))
    rate = float(workload.arrival_rate) * slot_s
    max_arrivals = int(min(max(math.ceil(rate + 10 * math.sqrt(rate) + 10), 16), 512))
    env = SplitEnv(model.n_layers, int(costs.unit_is_attn.shape[0]), ch_kind, max_arrivals, params, sid, load_kind)
    check_params(env, params)
    info = ScenarioInfo(id=sid, model=model.name, edge=edge.name, cloud=cloud_dev.name, edge_weight_format=wf,
                        cost_sources=(et.path, ct.path), ppl_source=ppl.source, trace=meta.get("trace_file", ""),
                        refs={k: float(getattr(params.reward, k)) for k in rw_raw}, costs=costs, context=context)
    return env, params, info


def _context(c: _Cfg, max_context: int) -> int:
    """KV-cache tokens reserved when checking which placements fit: `auto` is the workload's longest request."""
    c.seen.add("context")
    v = c.data.get("context")
    if v == "auto":
        return max_context
    return c.get("context", kind=int, lo=1)


def _reward(rw: _Cfg) -> tuple[RewardParams, dict]:
    """The reward's weights, and its normalisers as written (numbers, or 'auto' to fill from the tables)."""
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    raw = {k: rw.data.get(k) for k in ("energy_budget_j", "lat_ref_s", "energy_ref_j", "acc_ref")}
    reward = RewardParams(V=f32(rw.get("V", 0)), w_lat=f32(rw.get("w_lat", 0)), w_en=f32(rw.get("w_en", 0)),
                          w_acc=f32(rw.get("w_acc", 0)), w_fail=f32(rw.get("w_fail", 0)), energy_budget_j=f32(1.0),
                          acc_budget=f32(rw.get("acc_budget", 0)), lat_ref_s=f32(1.0), energy_ref_j=f32(1.0),
                          acc_ref=f32(1.0), z_max=f32(rw.get("z_max", 0, lo_open=True)),
                          scale=f32(rw.get("scale", 0, lo_open=True)))
    for k, v in raw.items():
        rw.seen.add(k)
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise rw.err(k, v, "must be a positive number or 'auto'")
    rw.done()
    return reward, raw


def _serving(c: _Cfg, model, device, weight_format: str, costs: CostArrays, workload: WorkloadParams,
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


@jax.jit
def _layer_split_costs(params: EnvParams, prompt, output, cond: Conditions):
    """Costs of every (layer split, format) in fixed conditions: [L+1, F] arrays (jitted once per shape)."""
    L1, U = params.costs.boundary_mask.shape[0], params.costs.unit_is_attn.shape[0]
    b, f = jnp.meshgrid(jnp.arange(L1), jnp.arange(params.costs.tx_bytes.shape[0]), indexing="ij")
    fn = lambda b, f: request_cost(params, b, f, jnp.zeros(U), prompt, output, cond)  # noqa: E731
    return jax.vmap(jax.vmap(fn))(b, f)


def nominal_refs(params: EnvParams, kind: str) -> dict:
    """Typical latency, energy and ΔPPL of the mean request in typical conditions (splitrl.env.nominal):
    medians (means for ΔPPL, floored at 0.1) over the feasible layer splits and formats. Dividing by
    them makes every reward term O(1)."""
    prompt, output, cond = nominal(kind, params, "typical")
    cost = _layer_split_costs(params, prompt, output, cond)
    ok = np.asarray(params.costs.boundary_mask)
    lat, en = np.asarray(cost["latency"])[ok], np.asarray(cost["energy"])[ok]
    dppl = np.asarray(cost["delta_ppl"])[ok]
    return {"lat_ref_s": float(np.median(lat)), "energy_ref_j": float(np.median(en)),
            "energy_budget_j": float(np.median(en)), "acc_ref": max(float(np.mean(dppl)), 0.1)}


def check_params(env: SplitEnv, params: EnvParams) -> None:
    """Host-side check of a params pytree against the env's static sizes; raises ScenarioError naming
    the field. Run it on any params you build or edit yourself (domain randomisation)."""
    L1, U = env.num_boundaries, env.num_units
    expect = {"costs.layer_rows": (L1, None, 2, layer_row_offsets(U)["K"]), "costs.model_rows": (2, None, None),
              "costs.boundary_mask": (L1,), "costs.unit_mask": (L1, U), "costs.tx_bytes": (3,),
              "ppl.rows": (L1, 3 + params.ppl.loss_grid.shape[0] + params.ppl.snr_grid.shape[0]),
              "channel.regime_trans": (3, 3)}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = ".".join(getattr(k, "name", str(k)) for k in path)
        a = np.asarray(leaf)
        if a.dtype != np.bool_ and not np.isfinite(a).all():
            raise ScenarioError(f"EnvParams.{name}: contains NaN or inf; every parameter must be finite")
        want = expect.get(name)
        if want is not None and (len(want) != a.ndim or any(w is not None and w != s for w, s in zip(want, a.shape, strict=False))):
            raise ScenarioError(f"EnvParams.{name}: shape {a.shape} does not match the env (expected {want}, "
                                f"None = any); the tables were built for another model")
    ch, w, r = params.channel, params.workload, params.reward
    checks = [
        ("channel.bw_min", float(ch.bw_min) > 0, "must be > 0 (bytes/s)"),
        ("channel.trace_bw", float(np.min(ch.trace_bw)) >= 0, "bandwidth must be >= 0"),
        ("channel.bw_rho", 0 <= float(ch.bw_rho) < 1, "must lie in [0, 1)"),
        ("channel.fade_rho", 0 <= float(ch.fade_rho) < 1, "must lie in [0, 1)"),
        ("channel.regime_trans", bool(np.all(np.asarray(ch.regime_trans) >= 0)) and np.allclose(np.asarray(ch.regime_trans).sum(1), 1, atol=1e-5), "rows must be probabilities summing to 1"),
        ("channel.max_retx", 0 <= float(ch.max_retx) <= R_MAX, f"must lie in [0, {R_MAX}]"),
        ("channel.rtt_mean_s", float(ch.rtt_mean_s) > 0, "must be > 0"),
        ("channel.packet_bytes", float(ch.packet_bytes) > 0, "must be > 0"),
        ("workload.class_probs", bool(np.all(np.asarray(w.class_probs) >= 0)) and abs(float(np.sum(w.class_probs)) - 1) < 1e-5, "must be probabilities summing to 1"),
        ("workload.arrival_rate", float(w.arrival_rate) >= 0, "must be >= 0"),
        ("workload.q_max", float(w.q_max) > 0, "must be > 0"),
        ("cloud.load_max", 0 <= float(params.cloud.load_max) < 1, "must lie in [0, 1)"),
        ("cloud.load_mean", 0 < float(params.cloud.load_mean) < 1, "must lie in (0, 1)"),
        ("cloud.slots", float(params.cloud.slots) >= 1, "must be >= 1"),
        ("cloud.service_s", float(params.cloud.service_s) > 0, "must be > 0"),
        ("channel.p_drop", 0 <= float(ch.p_drop) <= 1 and 0 <= float(ch.p_restore) <= 1, "must be probabilities"),
        ("reward.lat_ref_s", float(r.lat_ref_s) > 0, "must be > 0"),
        ("reward.energy_ref_j", float(r.energy_ref_j) > 0, "must be > 0"),
        ("reward.acc_ref", float(r.acc_ref) > 0, "must be > 0"),
    ]
    for name, ok, expected in checks:
        if not ok:
            value = functools.reduce(getattr, name.split("."), params)
            raise ScenarioError(f"EnvParams.{name} = {np.asarray(value).tolist()}: {expected}")
    rate = float(w.arrival_rate * params.slot_s)
    tail = 1.0 - sum(math.exp(k * math.log(max(rate, 1e-12)) - rate - math.lgamma(k + 1)) for k in range(env.max_arrivals + 1))
    if tail > 1e-6:
        raise ScenarioError(f"EnvParams.workload.arrival_rate = {float(w.arrival_rate)}: P(more than {env.max_arrivals} "
                            f"arrivals per slot) = {tail:.2g}; rebuild the env with make() for this rate")
