"""Fleet scenarios: a YAML file (splitrl/conf/fleet/*.yaml) -> a checked (FleetEnv, FleetParams) pair.

A fleet file names single-device scenarios (splitrl/conf/scenario) as device types with their share of
the N devices, the cells and the correlation of the channel draws within a cell, the cloud's replicas,
and the workload: the trace to replay, the requests per second of each device and of the background.
The model is in docs/fleet.md; every shipped file is an example. All checks run on the host: a bad value
raises `ScenarioError` naming the file and the field.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from splitrl.env.cloud import clip_lengths, read_workload
from splitrl.env.cost import request_cost
from splitrl.env.fleet import WORKLOAD_KINDS, FleetEnv
from splitrl.env.scenario import (
    ScenarioInfo,
    load_scenario_dict,
    load_yaml_dict,
    make_with_info,
    poisson_table_size,
    poisson_tail,
)
from splitrl.env.scenario_sections import Checked, ScenarioError
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import Conditions, EnvParams, FleetCloudParams, FleetParams, TraceParams
from splitrl.profiles import load_model
from splitrl.profiles.store import data_root
from splitrl.resources import config_dir

FLEET_DIR = config_dir() / "fleet"
MAX_DEVICES = 1024


@dataclasses.dataclass(frozen=True)
class FleetInfo:
    """What a fleet was built from, and the trace's figures (for logs and docs)."""
    id: str
    devices: tuple[ScenarioInfo, ...]   # per device type
    device_type: np.ndarray             # [N] index into `devices`
    trace: str
    trace_mean_rate: float              # requests/s of the replayed trace, over its full minutes
    mean_prompt: float                  # clipped to the model's context
    mean_output: float
    bg_work_mean: float                 # replica-seconds of the mean background request


# ----------------------------------------------------------------------------- the trace
def trace_arrays(path: Path, max_context: int) -> tuple[dict, float]:
    """The trace per full minute (the last, partial one dropped): rate shape, each minute's requests
    (index of the first, count) and every request's clipped lengths; and the mean rate in requests/s."""
    seconds, prompts, outputs = read_workload(path)
    minute = (seconds // 60).astype(int)
    n_min = int(minute.max())
    keep = minute < n_min
    prompt, output = clip_lengths(prompts[keep], outputs[keep], max_context)
    count = np.bincount(minute[keep], minlength=n_min)
    if count.min() < 1:
        raise ScenarioError(f"workload trace {path}: minute {int(np.argmin(count))} has no requests; every "
                            f"replayed minute needs at least one")
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    arrays = {"rate_shape": count / count.mean(), "first": first, "count": count, "prompt": prompt, "output": output}
    return arrays, float(count.mean() / 60.0)


@jax.jit
def _cloud_only_work(params: EnvParams, prompt, output):
    """(cloud prefill s, cloud decode s at batch 1) of each request served cloud-only, from the cost
    tables through `request_cost` itself (no timeout: the background's requests run to their end)."""
    params = params.replace(channel=params.channel.replace(timeout_s=jnp.float32(1e9)))
    f = jnp.float32
    cond = Conditions(bw=f(1e9), rtt=f(0.0), loss_p=f(0.0), snr_db=f(30.0), cloud_load=f(0.0), cloud_wait=f(0.0),
                      connected=f(1.0), reconnect=f(0.0))
    zeros = jnp.zeros(params.costs.unit_is_attn.shape[0])
    m = jax.vmap(lambda p, o: request_cost(params, 0, 0, zeros, p, o, cond))(prompt, output)
    return m["cloud_prefill_s"], m["cloud_decode_s"]


def background_work(params: EnvParams, tr: dict, gain: float) -> np.ndarray:
    """[M] replica-seconds of the minute's mean trace request served cloud-only: its prefill plus its
    decode steps shared by `gain` sequences of the batch."""
    pre, dec = _cloud_only_work(params, jnp.asarray(tr["prompt"], jnp.float32), jnp.asarray(tr["output"], jnp.float32))
    work = np.asarray(pre) + np.asarray(dec) / gain
    minute = np.repeat(np.arange(len(tr["count"])), tr["count"])
    return np.bincount(minute, weights=work) / tr["count"]


# ----------------------------------------------------------------------------- the devices
def _shares_to_counts(shares: list[float], n: int) -> np.ndarray:
    """Devices per type: floor(share · n), the remainder to the largest fractional parts."""
    raw = np.asarray(shares) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return counts


def _device_entries(c: Checked) -> list[tuple[str, float]]:
    """(single-device scenario, share) of each device type; the shares sum to 1."""
    entries = c.data.get("devices")
    c.seen.add("devices")
    if not isinstance(entries, list) or not entries:
        raise c.err("devices", entries, "must be a non-empty list of {scenario: <single-device scenario>, share: <0..1>}")
    out = []
    for i, entry in enumerate(entries):
        d = Checked(entry, c.where, f"devices[{i}].")
        out.append((d.get("scenario", kind=str), d.get("share", 0, 1, lo_open=True)))
        d.done()
        try:
            load_scenario_dict(out[-1][0])
        except ScenarioError as e:
            raise d.err("scenario", out[-1][0], str(e)) from e
    if abs(sum(share for _, share in out) - 1.0) > 1e-6:
        raise c.err("devices", [share for _, share in out], "the shares must sum to 1")
    return out


def _device_type(c: Checked, i: int, name: str, share: float, rate: float, trace: dict | None):
    """One device type: its single-device scenario with the fleet's arrival rate (and, replaying a trace,
    one request class at the trace's mean request and the trace's longest request as the KV context)."""
    d = Checked({}, c.where, f"devices[{i}].")
    data = copy.deepcopy(load_scenario_dict(name)[0])
    workload = data.get("workload", {})
    workload["arrival_rate"] = rate
    if trace is not None:   # the normalisers (features, reward refs) see the trace's mean request
        p, o = round(float(trace["prompt"].mean())), round(float(trace["output"].mean()))
        workload["classes"] = [{"name": "trace-mean", "prob": 1.0, "prompt": [p, p], "output": [o, o]}]
        data["context"] = int((trace["prompt"] + trace["output"]).max())
    try:
        env, params, info = make_with_info(data)
    except ScenarioError as e:
        raise d.err("scenario", name, f"this device scenario does not build for the fleet: {e}") from e
    return name, share, env, params, info


def _check_compatible(c: Checked, types: list) -> None:
    """Device types must share the model, the cloud, the env's static structure and the reward's V and scale
    (so the sum of the devices' rewards is one objective)."""
    name0, _, env0, p0, info0 = types[0]
    for i, (name, _, env, p, info) in enumerate(types[1:], 1):
        same = {"model": info.model == info0.model, "cloud and its cost table": info.cost_sources[1] == info0.cost_sources[1],
                "layers, units, channel kind and heat": (env.n_layers, env.n_units, env.channel_kind, env.heat)
                == (env0.n_layers, env0.n_units, env0.channel_kind, env0.heat),
                "slot_s and episode_slots": float(p.slot_s) == float(p0.slot_s)
                and int(p.max_steps_in_episode) == int(p0.max_steps_in_episode),
                "reward V and scale": float(p.reward.V) == float(p0.reward.V)
                and float(p.reward.scale) == float(p0.reward.scale)}
        for what, ok in same.items():
            if not ok:
                raise c.err(f"devices[{i}].scenario", name, f"differs from devices[0] ({name0}) in its {what}; "
                            f"the devices of a fleet must share them")


def _stack(c: Checked, params: list[EnvParams], device_type: np.ndarray) -> EnvParams:
    """The types' params stacked along a leading device axis, device i taking its type's."""
    ref = jax.tree_util.tree_flatten_with_path(params[0])[0]
    for k, p in enumerate(params[1:], 1):
        for (path, a), b in zip(ref, jax.tree.leaves(p), strict=True):
            if np.shape(a) != np.shape(b):
                field = ".".join(getattr(x, "name", str(x)) for x in path)
                raise c.err(f"devices[{k}].scenario", None, f"EnvParams.{field} has shape {np.shape(b)}, devices[0]'s "
                            f"{np.shape(a)}; give the device types the same kind of channel trace and cost tables")
    idx = jnp.asarray(device_type)
    return jax.tree.map(lambda *xs: jnp.stack(xs)[idx], *params)


def _max_arrivals(rate: float) -> int:
    """The Poisson table's size for a per-slot rate (the tail beyond it < 1e-6: `check_params`'s test)."""
    n = poisson_table_size(rate)
    if poisson_tail(rate, n) > 1e-6:
        raise ScenarioError(f"a device's peak arrivals per slot ({rate:.3g}) need a Poisson table beyond 512")
    return n


# ----------------------------------------------------------------------------- the builder
def load_fleet_dict(scenario: str | Path | dict) -> tuple[dict, str]:
    """The fleet mapping (splitrl/conf/fleet/*.yaml, a path or a dict) and a label for error messages."""
    return load_yaml_dict(scenario, FLEET_DIR, "fleet")


def make_fleet(scenario: str | Path | dict) -> tuple[FleetEnv, FleetParams]:
    """Build (env, default params) of a fleet by name (splitrl/conf/fleet), YAML path or mapping."""
    env, params, _ = make_fleet_with_info(scenario)
    return env, params


def make_fleet_with_info(scenario: str | Path | dict) -> tuple[FleetEnv, FleetParams, FleetInfo]:
    data, where = load_fleet_dict(scenario)
    c = Checked(data, where)
    fid, n = c.get("id", kind=str), c.get("n_devices", kind=int, lo=1)
    if n > MAX_DEVICES:
        raise c.err("n_devices", n, f"must be <= {MAX_DEVICES}")
    chn, cl, wl = c.sub("channel"), c.sub("cloud"), c.sub("workload")
    cells, corr = chn.get("cells", kind=int, lo=1), chn.get("correlation", 0, 1)
    if cells > n:
        raise chn.err("cells", cells, f"must be <= n_devices ({n})")
    replicas, wait_ref = cl.get("replicas", kind=int, lo=1), cl.get("wait_ref_s", 0, lo_open=True)
    toll = cl.get("toll", 0)
    kind, trace_name = wl.get("kind", kind=str), wl.get("trace", kind=str)
    if kind not in WORKLOAD_KINDS:
        raise wl.err("kind", kind, f"must be one of {list(WORKLOAD_KINDS)}")
    path = data_root() / "workloads" / f"{trace_name}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in (data_root() / "workloads").glob("*.csv"))
        raise wl.err("trace", trace_name, f"must name a workload in splitrl/profiles_data/workloads; known: {known}")
    rate, bg_rate = wl.get("rate_per_device", 0), wl.get("background_rate", 0)
    for s in (chn, cl, wl):
        s.done()
    entries = _device_entries(c)
    c.done()
    model = load_model(load_scenario_dict(entries[0][0])[0]["model"])
    tr, mean_rate = trace_arrays(path, model.max_context)
    types = [_device_type(c, i, name, share, rate, tr if kind == "trace" else None)
             for i, (name, share) in enumerate(entries)]
    _check_compatible(c, types)
    device_type = np.repeat(np.arange(len(types)), _shares_to_counts([t[1] for t in types], n))
    env0, p0 = types[0][2], types[0][3]
    if env0.sessions or env0.battery:
        raise c.err("devices[0].scenario", entries[0][0], "has a sessions or battery section: conversations and "
                    "batteries are not modelled in a fleet yet; remove it from the device's scenario")
    gain = float(min(p0.cloud.slots, p0.cloud.batch_knee))
    bg = background_work(p0, tr, gain)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    params = FleetParams(
        device=_stack(c, [t[3] for t in types], device_type), cell=jnp.asarray(np.arange(n) % cells, jnp.int32),
        channel_corr=f32(corr),
        cloud=FleetCloudParams(replicas=f32(replicas), batch_gain=f32(gain), wait_ref_s=f32(wait_ref),
                               bg_rate=f32(bg_rate), bg_work=f32(bg), toll=f32(toll)),
        trace=TraceParams(rate_shape=f32(tr["rate_shape"]), first=jnp.asarray(tr["first"], jnp.int32),
                          count=jnp.asarray(tr["count"], jnp.int32), prompt=f32(tr["prompt"]), output=f32(tr["output"])),
        slot_s=f32(p0.slot_s), max_steps_in_episode=jnp.asarray(p0.max_steps_in_episode, jnp.int32))
    peak = rate * float(p0.slot_s) * (float(tr["rate_shape"].max()) if kind == "trace" else 1.0)
    device = SplitEnv(env0.n_layers, env0.n_units, env0.channel_kind, _max_arrivals(peak), None, fid, env0.load_kind,
                      env0.heat, device_feature=True)
    env = FleetEnv(device, n, cells, kind, params, fid)
    weights = tr["count"] / tr["count"].sum()
    info = FleetInfo(id=fid, devices=tuple(t[4] for t in types), device_type=device_type, trace=trace_name,
                     trace_mean_rate=mean_rate, mean_prompt=float(tr["prompt"].mean()),
                     mean_output=float(tr["output"].mean()), bg_work_mean=float(np.dot(weights, bg)))
    return env, params, info
