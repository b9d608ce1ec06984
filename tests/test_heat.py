"""The edge's heat (splitrl/env/heat.py): the thermal step, the throttle, what they do to a request's
cost and to an episode, the observation, the scenario and device files, and the cloud's price."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from splitrl.env import features as F
from splitrl.env import heat
from splitrl.env.cost import action_cost
from splitrl.env.scenario import make, make_with_info
from splitrl.env.scenario_sections import ScenarioError
from splitrl.env.slot import estimated_conditions, slot_penalty
from splitrl.env.types import Action, HeatParams
from splitrl.profiles.errors import ProfileError
from splitrl.profiles.schema import Device
from splitrl.resources import config_dir

HEAT = "heat_s23_3g_bus"
H = HeatParams(ambient_c=jnp.float32(25.0), start_lo_c=jnp.float32(30.0), start_hi_c=jnp.float32(40.0),
               r_th=jnp.float32(5.0), tau_s=jnp.float32(60.0), throttle_c=jnp.float32(42.0),
               limit_c=jnp.float32(50.0), min_speed=jnp.float32(0.5))


def test_the_thermal_step_is_the_exact_rc_solution():
    # constant power: two half slots are one slot, and the temperature settles at ambient + R·P
    one = heat.next_temp(H, 30.0, 4.0, 10.0)
    half = heat.next_temp(H, heat.next_temp(H, 30.0, 4.0, 5.0), 4.0, 5.0)
    np.testing.assert_allclose(one, half, rtol=1e-6)
    t = 30.0
    for _ in range(200):
        t = heat.next_temp(H, t, 4.0, 10.0)
    np.testing.assert_allclose(t, heat.steady_temp(H, 4.0), rtol=1e-5)
    assert float(heat.steady_temp(H, 4.0)) == 45.0
    # without power it cools toward the room, never below it
    cooled = heat.next_temp(H, 48.0, 0.0, 60.0)
    assert 25.0 < float(cooled) < 48.0
    np.testing.assert_allclose(cooled, 25.0 + 23.0 * np.exp(-1.0), rtol=1e-6)


def test_the_governor_cuts_the_clock_linearly_between_throttle_and_limit():
    speeds = np.asarray(heat.speed(H, jnp.array([20.0, 42.0, 46.0, 50.0, 70.0])))
    np.testing.assert_allclose(speeds, [1.0, 1.0, 0.75, 0.5, 0.5], rtol=1e-6)


def test_a_throttled_edge_computes_slower_at_the_same_joules_and_the_cloud_is_untouched():
    env, params = make(HEAT)
    state = env.reset(jax.random.PRNGKey(0), params)[1]
    cool = estimated_conditions(state, params).replace(edge_speed=jnp.float32(1.0), connected=jnp.float32(1.0))
    hot = cool.replace(edge_speed=jnp.float32(0.5))
    U = env.n_units

    def cost(b, cond):
        return action_cost(params, jnp.int32(b), jnp.int32(0), jnp.zeros(U, jnp.int32), 200.0, 40.0, cond)

    edge_c, edge_h = cost(env.n_layers, cool), cost(env.n_layers, hot)
    np.testing.assert_allclose(edge_h["edge_compute_s"], 2 * edge_c["edge_compute_s"], rtol=1e-5)
    np.testing.assert_allclose(edge_h["latency"], 2 * edge_c["latency"], rtol=1e-5)   # edge-only: all compute
    assert float(edge_h["energy"]) >= float(edge_c["energy"])   # same compute joules, longer idle radio/SoC
    cloud_c, cloud_h = cost(0, cool), cost(0, hot)
    for k in ("latency", "energy", "cloud_prefill_s", "cloud_decode_s"):
        np.testing.assert_allclose(cloud_h[k], cloud_c[k], rtol=1e-6)


def _episode(env, params, boundary, key=0):
    U = env.n_units
    action = Action(boundary=jnp.int32(boundary), fmt=jnp.int32(0), units=jnp.zeros(U, jnp.int32))

    def step(carry, k):
        state, = carry
        _, state, _, _, info = env.step_env(k, state, action, params)
        return (state,), (info["temp_c"], info["edge_speed"])

    obs, state = env.reset(jax.random.PRNGKey(key), params)
    keys = jax.random.split(jax.random.PRNGKey(key + 1), int(params.max_steps_in_episode))
    _, (temp, speed) = jax.lax.scan(step, (state,), keys)
    return obs, state, np.asarray(temp), np.asarray(speed)


def test_edge_work_heats_the_phone_into_throttling_and_the_cloud_lets_it_cool():
    env, params = make(HEAT)
    assert env.heat and env.obs_dim == len(F.FEATURES) + 1
    obs, state, temp_e, speed_e = _episode(env, params, env.n_layers)
    _, _, temp_c, speed_c = _episode(env, params, 0)
    h = params.heat
    assert float(h.start_lo_c) <= float(state.temp_c) <= float(h.start_hi_c)
    assert temp_e[0] == temp_c[0] == float(state.temp_c)                     # the same start
    assert temp_e[-1] > float(h.throttle_c) and (speed_e < 1).mean() > 0.5   # edge-only throttles
    assert temp_c[-1] < float(h.throttle_c) and speed_c[-1] == 1.0           # cloud-only cools down
    np.testing.assert_allclose(speed_e, np.asarray(heat.speed(h, temp_e)), rtol=1e-6)
    # the phone reports its temperature: 0 at the throttle point, 1 at the limit
    i = [f.name for f in env.features].index("temp")
    want = (float(state.temp_c) - float(h.throttle_c)) / (float(h.limit_c) - float(h.throttle_c))
    np.testing.assert_allclose(obs.features[i], want, rtol=1e-5)


def test_without_heat_the_edge_never_throttles_and_the_contract_is_unchanged():
    env, params = make("outage_heavy")
    assert not env.heat and env.obs_dim == len(F.FEATURES) and env.N_RESET_DRAWS == 10
    _, _, temp, speed = _episode(env, params, env.n_layers)
    assert (temp == 25.0).all() and (speed == 1.0).all()
    assert float(params.reward.w_cloud) == 0.0


def _scenario(**edits) -> dict:
    data = yaml.safe_load((config_dir() / "scenario" / f"{HEAT}.yaml").read_text())
    for key, value in edits.items():
        node = data
        *path, last = key.split(".")
        for k in path:
            node = node[k]
        node[last] = value
    return data


@pytest.mark.parametrize("edits, field", [
    ({"edge": "this-host", "model": "smollm2-135m", "edge_weight_format": "fp32"}, "heat.enabled"),
    ({"heat.start_c": [20.0, 30.0]}, "heat.start_c"),
    ({"heat.start_c": [40.0]}, "heat.start_c"),
    ({"heat.ambient_c": "warm"}, "heat.ambient_c"),
    ({"heat.fan": True}, "heat.fan"),
])
def test_a_bad_heat_section_names_the_field(edits, field):
    data = _scenario(**edits)
    if "heat.fan" in edits:
        data["heat"]["fan"] = True
    with pytest.raises(ScenarioError, match=field.replace(".", r"\.")):
        make(data)


def test_a_disabled_heat_section_is_no_heat():
    env, params = make(_scenario(**{"heat.enabled": False}))
    assert not env.heat and float(params.heat.r_th) == 0.0


def test_a_thermal_block_must_cite_its_source():
    from splitrl.profiles.reader import read_document
    from splitrl.profiles.store import data_root
    data = read_document(data_root() / "devices" / "galaxy-s23.yaml")
    Device.from_dict(data)
    bad = dict(data, source={k: v for k, v in data["source"].items() if k != "thermal"})
    with pytest.raises(ProfileError, match="source.thermal"):
        Device.from_dict(bad)
    bad = dict(data, thermal=dict(data["thermal"], limit_c=40.0))
    with pytest.raises(ProfileError, match="limit_c"):
        Device.from_dict(bad)


def test_the_cloud_price_charges_cloud_gpu_seconds_only():
    env, params, info = make_with_info(HEAT)
    assert np.isclose(float(params.reward.w_cloud), 0.7) and info.refs["cloud_ref_s"] > 0
    state = env.reset(jax.random.PRNGKey(0), params)[1]
    cond = estimated_conditions(state, params).replace(connected=jnp.float32(1.0))
    U = env.n_units
    free = params.replace(reward=params.reward.replace(w_cloud=jnp.float32(0.0)))
    for b in (0, env.n_layers):
        m = action_cost(params, jnp.int32(b), jnp.int32(0), jnp.zeros(U, jnp.int32), 200.0, 40.0, cond)
        extra = float(slot_penalty(params, m) - slot_penalty(free, m))
        cloud_s = float(m["cloud_prefill_s"] + m["cloud_decode_s"])
        np.testing.assert_allclose(extra, 0.7 * cloud_s / float(params.reward.cloud_ref_s), rtol=1e-4, atol=1e-7)
        assert (extra > 0) == (b == 0)


def test_the_runtime_reads_the_edge_temperature_or_refuses(tmp_path):
    from splitrl.runtime.policy import edge_temperature_c
    assert edge_temperature_c(tmp_path) is None
    for i, milli in enumerate((41500, 57250)):
        (tmp_path / f"thermal_zone{i}").mkdir()
        (tmp_path / f"thermal_zone{i}" / "temp").write_text(f"{milli}\n")
    assert edge_temperature_c(tmp_path) == 57.25


def test_an_exported_heat_policy_reads_the_edge_temperature(tmp_path, monkeypatch):
    """The ONNX metadata carries the temp feature with the scenario's normalisation; the runtime builds the
    env's features from raw quantities, takes the temperature it is given, and refuses without one."""
    from splitrl.runtime.policy import PolicyMismatch
    from tests.test_harness_export import exported_policy_with_the_envs_features
    pol, env, ep = exported_policy_with_the_envs_features(tmp_path, HEAT)
    i = [f.name for f in env.features].index("temp")
    feats = pol.observe(1.25e6, 0.04, 64, 32, temp_c=46.0)
    assert feats[i] == pytest.approx((46.0 - 42.0) / (50.0 - 42.0))
    monkeypatch.setattr("splitrl.runtime.policy.THERMAL_ZONES", tmp_path / "no_sensor")
    with pytest.raises(PolicyMismatch, match="temperature"):
        pol.observe(1.25e6, 0.04, 64, 32)


def test_the_heat_experiment_is_the_documented_training_command():
    """`+experiment=heat` is the documented recipe (γ = 0.99: a horizon longer than the phone's thermal time
    constant) and leaves the scenario to the command line."""
    from hydra import compose, initialize_config_dir

    from splitrl.profiles.store import load_device
    from splitrl.training.train import CONF_DIR
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        experiment = compose(config_name="train", overrides=["+experiment=heat", "scenario=heat_s23_metro"])
        command = compose(config_name="train", overrides=["scenario=heat_s23_metro", "agent.gamma=0.99"])
    assert experiment == command and experiment.scenario.id == "heat-s23-metro-v1"
    s23 = load_device("galaxy-s23")
    assert 1.0 / (1.0 - experiment.agent.gamma) >= s23.thermal.tau_s / experiment.scenario.slot_s


def test_heat_dpp_reads_the_phone_hotter_and_is_tuned_on_training_episodes():
    """heat_dpp at margin 0 is myopic DPP; read hot enough it keeps no more layers on a warm phone than myopic
    DPP does, and fewer on one just under its throttle point; splitrl-eval picks its margin by the least
    objective on training episodes, and evaluates it only where the edge heats."""
    from splitrl.baselines import make_baseline
    from splitrl.evaluation.run import EvalConfig, evaluate, tune_heat_margin
    env, params = make(HEAT)
    myopic, hot = make_baseline("myopic_dpp").bind(env, params), make_baseline("heat_dpp").bind(env, params)
    cand = myopic.init(env, params)
    pp = hot.init(env, params)
    _, state = env.reset(jax.random.PRNGKey(0), params)
    act = jax.jit(lambda pp, s: hot(pp, None, None, s, params, None))
    picks = {}
    for t in (30.0, 41.5):
        s = state.replace(temp_c=jnp.float32(t))
        want = jax.jit(lambda s: myopic(cand, None, None, s, params, None))(s)
        assert int(act(pp, s).boundary) == int(want.boundary)                          # margin 0: myopic DPP
        picks[t] = (int(want.boundary), int(act(pp | {"margin": jnp.float32(8.0)}, s).boundary))
    assert all(h <= m for m, h in picks.values()) and picks[41.5][1] < picks[41.5][0], picks
    cfg = EvalConfig(policies=("heat_dpp",), runs=(), scenarios=(HEAT,), seeds=1, episodes=2, steps=4,
                     splitllm_sla_factor=1.0, chen_lam=1.0, chen_timesteps=0, plot_policies=(),
                     heat_dpp_margins=(0.0, 8.0))
    tuned_pp, row = tune_heat_margin(env, hot, params, pp, HEAT, cfg, 4)
    scores = row["heat_margin_scores"]
    assert set(scores) == {0.0, 8.0} and row["heat_margin_c"] == min(scores, key=scores.get)
    assert float(tuned_pp["margin"]) == row["heat_margin_c"]
    rows, _ = evaluate(dataclasses.replace(cfg, scenarios=("default",)), log=lambda *_: None)
    assert rows == []                                         # no heat: no heat_dpp row (it is myopic DPP there)
