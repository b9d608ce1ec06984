"""Export parity: the ONNX policy (onnxruntime) reproduces the JAX policy to <= 1e-5 on random and on
recorded env observations, with a dynamic batch; its metadata makes the runtime refuse other models."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_random(tmp_path_factory.mktemp("run"), "default")


def export_random(run, scenario_name: str):
    """A run directory like splitrl-train writes (resolved_config.yaml + final_params.msgpack, two
    members) for a scenario, with the real flax HierarchicalNet, weights perturbed to O(1) so logits are
    not tiny, exported to run/policy.onnx: (run, report, env, env params, agent config, params)."""
    import jax
    import yaml

    from splitrl.agents.config import PPOConfig
    from splitrl.agents.networks import HierarchicalPolicy
    from splitrl.env import make
    from splitrl.export import onnx as E
    from splitrl.training.rundir import write_final_params
    from tests.conftest import CONF

    scenario = yaml.safe_load((CONF / "scenario" / f"{scenario_name}.yaml").read_text())
    env, ep = make(scenario)
    pol = HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, (32, 32), "separate")
    params = pol.init(jax.random.PRNGKey(1), env.reset(jax.random.PRNGKey(0), ep)[0])
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: np.asarray(x) + rng.normal(0, 0.3, x.shape).astype(np.float32), params)
    members = jax.tree.map(lambda x: np.stack([x * 0.5, x]), params)
    write_final_params(run, members)
    agent = yaml.safe_load((CONF / "agent" / "hppo.yaml").read_text()) | {"hidden": [32, 32]}
    (run / "resolved_config.yaml").write_text(yaml.safe_dump({"agent": agent, "scenario": scenario}))
    agent = PPOConfig.from_dict(agent, "test")
    (run / "summary.json").write_text('{"greedy_return": [-5.0, -1.0]}')
    report = E.export_run(run, run / "policy.onnx", check=128)
    return run, report, env, ep, agent, params


def exported_policy_with_the_envs_features(tmp_path, scenario_name: str, model_name: str = "gpt2-xl"):
    """(OnnxPolicy, env, env params) of a random policy exported on the scenario, after checking that the
    runtime builds the env's own features from the env's raw quantities (names, order, normalisation)."""
    import jax

    from splitrl.runtime.policy import OnnxPolicy
    from tests.test_features import random_states
    _, report, env, ep, *_ = export_random(tmp_path, scenario_name)
    pol = OnnxPolicy(report["onnx"], model_name=model_name)
    assert [f.name for f in pol.meta.features] == [f.name for f in env.features]
    for state in random_states(env, ep, 4, seed=3):
        want = np.asarray(env.get_obs(state, ep).features)
        np.testing.assert_allclose(pol.features(jax.device_get(env.raw_features(state, ep))), want, atol=1e-6)
    return pol, env, ep


def test_parity_on_random_and_env_observations(exported):
    _, report, *_ = exported
    p = report["parity"]
    assert p["greedy_mismatches"] == 0
    assert max(p["boundary_logits"], p["format_logits"], p["unit_logits"], p["value"]) <= 1e-5
    assert report["member"] == 1                          # the best greedy return of summary.json


def test_dynamic_batch_and_metadata(exported):
    import onnxruntime as ort

    from splitrl.export import onnx as E
    run, report, env, ep, agent, params = exported
    sess = ort.InferenceSession(report["onnx"], providers=["CPUExecutionProvider"])
    for n in (1, 7, 300):
        f, bm, fm, um = E.random_observations(env, ep, n, seed=n)
        out = sess.run(None, {"features": f, "boundary_mask": bm, "format_mask": fm, "unit_mask": um})
        assert out[0].shape == (n, env.num_boundaries) and out[5].shape == (n, env.num_units)
        want = E.jax_outputs(agent, env, params, f, bm, fm, um)
        assert np.max(np.abs(out[2] - want[2])) <= 1e-5 and (out[3] == want[3]).all()
        assert not bm[np.arange(n), out[3]].__contains__(False)   # greedy boundaries are allowed ones
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["splitrl.model"] == "smollm2-135m" and meta["splitrl.scenario"] == "default-v2"
    assert len(__import__("json").loads(meta["splitrl.features"])) == env.obs_dim


def test_runtime_refuses_a_policy_for_another_model(exported):
    from splitrl.runtime.policy import OnnxPolicy, PolicyMismatch
    _, report, *_ = exported
    with pytest.raises(PolicyMismatch, match="smollm2-135m"):
        OnnxPolicy(report["onnx"], model_name="llama-2-7b")
    pol = OnnxPolicy(report["onnx"], model_name="smollm2-135m")
    b, f, units = pol.act(pol.observe(1.25e6, 0.04, prompt_len=64, output_len=32))
    assert pol.boundary_mask[b] and f in (0, 1, 2) and len(units) == len(pol.unit_mask[0])
    assert all(pol.unit_mask[b][i] or not u for i, u in enumerate(units))


def test_export_errors_name_the_fix(tmp_path):
    from splitrl.export import onnx as E
    with pytest.raises(E.ExportError, match="resolved_config.yaml"):
        E.load_run(tmp_path)


def test_runtime_builds_the_env_features_from_the_exported_metadata(exported):
    import jax

    from splitrl.runtime.policy import OnnxPolicy
    from tests.test_features import random_states
    _, report, env, ep, *_ = exported
    pol = OnnxPolicy(report["onnx"], model_name="smollm2-135m")
    for state in random_states(env, ep, 8, seed=11):
        want = np.asarray(env.get_obs(state, ep).features)
        got = pol.features(jax.device_get(env.raw_features(state, ep)))
        np.testing.assert_allclose(got, want, atol=1e-6)
    # the wait the cloud published reaches the policy's cloud_wait feature, over the scenario's timeout
    from splitrl.env import features as F
    i = F.NAMES.index("cloud_wait")
    feats = pol.observe(1.25e6, 0.04, 64, 32, cloud_wait=5.0)
    assert feats[i] == pytest.approx(5.0 / float(ep.channel.timeout_s)) and feats[i] > 0
