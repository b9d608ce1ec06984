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

from splitrl.env.cost import request_cost
from splitrl.env.crossing import R_MAX
from splitrl.env.nominal import nominal
from splitrl.env.scenario_sections import (
    Checked,
    ScenarioError,
    battery_section,
    channel_section,
    context_of,
    heat_section,
    reward_section,
    serving_section,
    session_section,
    workload_section,
)
from splitrl.env.split_env import SplitEnv
from splitrl.env.tables import (
    CostArrays,
    build_cost_arrays,
    build_ppl_arrays,
    layer_row_offsets,
    memory_masks,
)
from splitrl.env.types import (
    Conditions,
    CostParams,
    EnvParams,
    PPLParams,
    RadioParams,
)
from splitrl.profiles import load_costs, load_device, load_model, load_ppl
from splitrl.profiles.formats import WEIGHT_FORMATS
from splitrl.resources import config_dir

SCENARIO_DIR = config_dir() / "scenario"


def poisson_table_size(rate: float) -> int:
    """How many arrivals per slot the env's inverse-CDF Poisson table covers at `rate` per slot (mean + 10
    standard deviations + 10, between 16 and 512): `poisson_tail` beyond it is negligible for any rate
    the table can hold."""
    return int(min(max(math.ceil(rate + 10 * math.sqrt(rate) + 10), 16), 512))


def poisson_tail(rate: float, n: int) -> float:
    """P(more than n arrivals in a slot) for Poisson(rate): what the env's table of 0..n leaves out."""
    return 1.0 - sum(math.exp(k * math.log(max(rate, 1e-12)) - rate - math.lgamma(k + 1)) for k in range(n + 1))


def load_yaml_dict(spec: str | Path | dict, directory: Path, kind: str = "scenario") -> tuple[dict, str]:
    """A mapping given as a dict, a YAML path, or the name of a file in `directory`; and a label for
    error messages. `kind` names what is loaded in those messages (scenario, fleet)."""
    if isinstance(spec, dict):
        return spec, f"<{kind} dict>"
    path = Path(spec)
    if path.suffix not in (".yaml", ".yml"):
        path = directory / f"{spec}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in directory.glob("*.yaml"))
            raise ScenarioError(f"{kind} {spec!r} is unknown; known: {known} (or give a path to a YAML file)")
    if not path.is_file():
        raise ScenarioError(f"{kind} file {path} does not exist")
    return yaml.safe_load(path.read_text()), str(path)


def load_scenario_dict(scenario: str | Path | dict) -> tuple[dict, str]:
    """The scenario mapping and a label for error messages."""
    return load_yaml_dict(scenario, SCENARIO_DIR, "scenario")


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
    c = Checked(data, where)
    sid = c.get("id", kind=str)
    model = load_model(c.get("model", kind=str))
    edge, cloud_dev = load_device(c.get("edge", kind=str)), load_device(c.get("cloud", kind=str))
    wf, cwf = c.get("edge_weight_format", kind=str), c.get("cloud_weight_format", kind=str)
    for key, v in (("edge_weight_format", wf), ("cloud_weight_format", cwf)):
        if v not in WEIGHT_FORMATS:
            raise c.err(key, v, f"must be one of {list(WEIGHT_FORMATS)}")
    workload, max_context = workload_section(c.sub("workload"))
    context = context_of(c, max_context)
    kind = c.get("table_kind", kind=str)
    et, ct = load_costs(model, edge.name, wf, kind), load_costs(model, cloud_dev.name, cwf, kind)
    costs = build_cost_arrays(model, edge, cloud_dev, et, ct, context)
    ppl_model = load_model(c.get("ppl_table", kind=str))
    ppl = build_ppl_arrays(load_ppl(ppl_model), ppl_model, model)
    slot_s = c.get("slot_s", 0, lo_open=True)
    steps = c.get("episode_slots", kind=int, lo=1)
    ch_kind, channel, meta = channel_section(c.sub("channel"), slot_s)
    load_kind, cloud_params = serving_section(c.sub("serving"), model, cloud_dev, cwf, costs, workload, slot_s)
    reward, rw_raw = reward_section(c.sub("reward"))
    has_heat, heat = heat_section(c, edge)
    has_sessions, session = session_section(
        c, model, costs, lambda tokens: memory_masks(model, edge, cloud_dev, wf, cwf, tokens)[:2])
    has_battery, battery = battery_section(c, edge)
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
                       reward=reward, slot_s=f32(slot_s), max_steps_in_episode=jnp.asarray(steps, jnp.int32),
                       heat=heat, session=session, battery=battery)
    refs = nominal_refs(params, ch_kind)
    params = params.replace(reward=reward.replace(
        **{k: f32(refs[k] if rw_raw[k] == "auto" else rw_raw[k]) for k in rw_raw}))
    max_arrivals = poisson_table_size(float(workload.arrival_rate) * slot_s)
    env = SplitEnv(model.n_layers, int(costs.unit_is_attn.shape[0]), ch_kind, max_arrivals, params, sid, load_kind,
                   has_heat, has_sessions, has_battery)
    check_params(env, params)
    info = ScenarioInfo(id=sid, model=model.name, edge=edge.name, cloud=cloud_dev.name, edge_weight_format=wf,
                        cost_sources=(et.path, ct.path), ppl_source=ppl.source, trace=meta.get("trace_file", ""),
                        refs={k: float(getattr(params.reward, k)) for k in rw_raw}, costs=costs, context=context)
    return env, params, info


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
    cloud_s = float(cost["cloud_prefill_s"][0, 0] + cost["cloud_decode_s"][0, 0])   # boundary 0: cloud-only
    return {"lat_ref_s": float(np.median(lat)), "energy_ref_j": float(np.median(en)),
            "energy_budget_j": float(np.median(en)), "acc_ref": max(float(np.mean(dppl)), 0.1),
            "cloud_ref_s": max(cloud_s, 1e-6)}


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
    tail = poisson_tail(float(w.arrival_rate * params.slot_s), env.max_arrivals)
    if tail > 1e-6:
        raise ScenarioError(f"EnvParams.workload.arrival_rate = {float(w.arrival_rate)}: P(more than {env.max_arrivals} "
                            f"arrivals per slot) = {tail:.2g}; rebuild the env with make() for this rate")
