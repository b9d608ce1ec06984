"""`splitrl-export CHECKPOINT --out policy.onnx`: a trained hierarchical policy as an ONNX model.

CHECKPOINT is a `splitrl-train` run directory (resolved_config.yaml + final_params.msgpack). The
manager and worker are re-created in PyTorch, the Flax weights copied (a flax Dense kernel is
[in, out], a torch Linear weight [out, in]: transposed), and the model exported with a dynamic
batch dimension given explicitly (the dynamo exporter freezes it otherwise).

ONNX inputs  (N = batch):  features f32[N, F] (the observation contract, splitrl/env/features.py), boundary_mask bool[N, L+1], format_mask bool[N, 3],
                           unit_mask bool[N, L+1, U]
ONNX outputs:              boundary_logits f32[N, L+1], format_logits f32[N, 3] (masked, -1e9),
                           unit_logits f32[N, U, 2] (cloud, edge) for the greedy (boundary, format),
                           boundary i64[N], format i64[N], units i64[N, U] (the greedy action:
                           all 0 when the worker's gate keeps the boundary layer whole),
                           value f32[N], split_logits f32[N, 2] (whole, split; split masked when
                           no unit of the boundary layer may go to the edge)
Metadata (`metadata_props`; the format is splitrl/export/metadata.py): the model, the scenario, the
observation contract with the scenario's numbers, the masks. The runtime refuses a policy built for
another model or under another metadata format.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from splitrl.export import metadata as metadata_io
from splitrl.export.twin import ExportError, TorchHierarchical, build_torch_policy, load_flax_weights
from splitrl.training.rundir import RunDir, RunDirError

INPUTS = ("features", "boundary_mask", "format_mask", "unit_mask")
OUTPUTS = ("boundary_logits", "format_logits", "unit_logits", "boundary", "format", "units", "value", "split_logits")


# ----------------------------------------------------------------------------- checkpoint + env
def load_run(checkpoint: str | Path, member: int | None = None):
    """(agent config, RunDir, one member's params, member index) from a run directory."""
    try:
        run = RunDir.read(checkpoint)
        if run.agent.policy != "hierarchical" or run.agent.env != "split":
            raise ExportError(f"{run.path}: agent.policy = {run.agent.policy!r}, agent.env = {run.agent.env!r}; "
                              "the exporter needs a hierarchical policy on the split env (agent=hppo)")
        params, member = run.params(member)
    except RunDirError as e:
        raise ExportError(str(e)) from e
    return run.agent, run, params, member


def fleet_device(fleet: dict, device: int, where: str):
    """(the device env, its EnvParams, ScenarioInfo) of device `device` of a fleet a run trained on: the
    shared policy runs per device, so an export is for one device, with that device's contract numbers
    (its masks, its normalisers, its edge/cloud ratio)."""
    import jax

    from splitrl.env.fleet_scenario import make_fleet_with_info
    fenv, fparams, info = make_fleet_with_info(fleet)
    if not 0 <= device < fenv.n_devices:
        raise ExportError(f"{where}: --device {device}: the fleet {info.id} has devices 0..{fenv.n_devices - 1}")
    kind = info.devices[int(info.device_type[device])]
    return fenv.device, jax.tree.map(lambda x: x[device], fparams.device), kind


# ----------------------------------------------------------------------------- export
def export_onnx(net: TorchHierarchical, out: Path, metadata: dict[str, str], obs_dim: int) -> Path:
    import onnx

    n = 2
    args = (torch.zeros(n, obs_dim), torch.ones(n, net.nb, dtype=torch.bool), torch.ones(n, net.nf, dtype=torch.bool),
            torch.ones(n, net.nb, net.nu, dtype=torch.bool))
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic = {name: {0: batch} for name in INPUTS}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, args, str(out), input_names=list(INPUTS), output_names=list(OUTPUTS), dynamo=True,
                      dynamic_shapes=dynamic, optimize=True, verbose=False)
    model = onnx.load(str(out))
    metadata_io.write(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    for name in INPUTS:   # the batch must really be dynamic
        dim0 = next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value"):
            raise ExportError(f"input {name} has a frozen batch dimension {dim0.dim_value}")
    return out


def jax_outputs(agent, env, params, features, boundary_mask, format_mask, unit_mask):
    """The JAX policy's logits and greedy action on a batch (what the ONNX model must reproduce)."""
    import jax
    import jax.numpy as jnp

    from splitrl.agents.networks import HierarchicalNet, HierarchicalPolicy
    from splitrl.env.types import Observation
    pol = HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, agent.hidden,
                             agent.critic)

    def one(f, bm, fm, um):
        obs = Observation(features=f, boundary_mask=bm, format_mask=fm, unit_mask=um)
        b_logits, f_logits, value = pol.net.apply(params, obs, method=HierarchicalNet.manager)
        b, fmt = jnp.argmax(b_logits), jnp.argmax(f_logits)
        s_logits, u_logits = pol.net.apply(params, obs, b, fmt, method=HierarchicalNet.worker)
        units = jnp.argmax(u_logits, -1) * jnp.argmax(s_logits)
        return b_logits, f_logits, u_logits, b, fmt, units, value, s_logits
    params = jax.tree.map(jnp.asarray, params)
    return [np.asarray(x) for x in jax.jit(jax.vmap(one))(jnp.asarray(features), jnp.asarray(boundary_mask),
                                                          jnp.asarray(format_mask), jnp.asarray(unit_mask))]


def random_observations(env, env_params, n: int, seed: int = 0):
    """Random features in the observation box and random masks (each row keeps one allowed choice)."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(-3, 3, (n, env.obs_dim)).astype(np.float32)
    bm = rng.random((n, env.num_boundaries)) < 0.7
    bm[np.arange(n), rng.integers(0, env.num_boundaries, n)] = True
    fm = rng.random((n, env.num_formats)) < 0.7
    fm[np.arange(n), rng.integers(0, env.num_formats, n)] = True
    um = rng.random((n, env.num_boundaries, env.num_units)) < 0.5
    return f, bm, fm, um


def env_observations(env, env_params, n: int, seed: int = 0):
    """Observations recorded from the environment under a uniform random policy."""
    import jax
    import jax.numpy as jnp

    from splitrl.env.types import Action
    key = jax.random.PRNGKey(seed)
    obs, state = env.reset(key, env_params)
    rows = []
    for _ in range(n):
        key, kb, kf, ku, ks = jax.random.split(key, 5)
        rows.append(jax.device_get(obs))
        action = Action(boundary=jax.random.randint(kb, (), 0, env.num_boundaries),
                        fmt=jax.random.randint(kf, (), 0, env.num_formats),
                        units=jax.random.randint(ku, (env.num_units,), 0, 2).astype(jnp.int32))
        obs, state, *_ = env.step(ks, state, action, env_params)
    stack = lambda name: np.stack([np.asarray(getattr(o, name)) for o in rows])  # noqa: E731
    return stack("features"), stack("boundary_mask"), stack("format_mask"), stack("unit_mask")


def parity(onnx_path: Path, agent, env, params, batches) -> dict[str, float]:
    """Max |onnxruntime - JAX| per output over the batches; greedy actions must agree exactly."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = dict.fromkeys(("boundary_logits", "format_logits", "unit_logits", "value", "split_logits"), 0.0)
    mismatched = 0
    for f, bm, fm, um in batches:
        got = sess.run(None, {"features": f, "boundary_mask": bm, "format_mask": fm, "unit_mask": um})
        want = jax_outputs(agent, env, params, f, bm, fm, um)
        for i, name in ((0, "boundary_logits"), (1, "format_logits"), (2, "unit_logits"), (6, "value"), (7, "split_logits")):
            worst[name] = max(worst[name], float(np.max(np.abs(got[i] - want[i]))))
        mismatched += sum(int(np.sum(np.asarray(got[i]) != np.asarray(want[i]))) for i in (3, 4, 5))
    return worst | {"greedy_mismatches": float(mismatched)}


def export_run(checkpoint, out, member: int | None = None, check: int = 256, device: int | None = None) -> dict:
    """Export one member of a run; a fleet run exports the shared policy for one of its devices (`device`,
    default 0: the policy's contract numbers are that device's)."""
    from splitrl.env import make
    agent, run, params, member = load_run(checkpoint, member)
    fleet = run.config.get("fleet")
    if fleet is not None:
        device = 0 if device is None else device
        env, env_params, kind = fleet_device(fleet, device, str(run.path))
        model_name, scenario_id = kind.model, f"{run.fleet_id}/device{device}:{kind.id}"
    elif device is not None:
        raise ExportError(f"{run.path}: --device picks a device of a fleet run; this run trained on a scenario")
    else:
        scenario = run.scenario
        env, env_params = make(scenario if scenario is not None else "default")
        model_name, scenario_id = (scenario or {}).get("model", "smollm2-135m"), env.scenario_id
    net = load_flax_weights(build_torch_policy(agent, env), params)
    meta = metadata_io.for_policy(env, env_params, model_name, member, agent.hidden) | {"scenario": scenario_id}
    path = export_onnx(net, out, meta, env.obs_dim)
    report = {"onnx": str(path), "member": member, "model": model_name, "scenario": scenario_id}
    if check:
        report["parity"] = parity(path, agent, env, params, [random_observations(env, env_params, check),
                                                             env_observations(env, env_params, min(check, 64))])
        bad = {k: v for k, v in report["parity"].items() if (v > 1e-5 if k != "greedy_mismatches" else v > 0)}
        if bad or any(math.isnan(v) for v in report["parity"].values()):
            raise ExportError(f"{path}: onnxruntime does not match the JAX policy: {report['parity']}")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="splitrl-export", description="Export a trained HPPO policy to ONNX.")
    ap.add_argument("checkpoint", help="splitrl-train run directory (resolved_config.yaml, final_params.msgpack)")
    ap.add_argument("--out", default="policy.onnx")
    ap.add_argument("--member", type=int, default=None, help="which of the run's policies (default: best greedy return)")
    ap.add_argument("--check", type=int, default=256, help="random observations for the parity check (0: skip)")
    ap.add_argument("--device", type=int, default=None,
                    help="a fleet run: the device whose contract numbers the policy carries (default 0)")
    a = ap.parse_args(argv)
    try:
        report = export_run(a.checkpoint, a.out, a.member, a.check, a.device)
    except ExportError as e:
        print(f"error: {e}")
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
