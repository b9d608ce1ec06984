"""The edge's battery: it drains with the slot's edge energy, Z_B counts spending ahead of an even
spend-down, and at the floor the phone stops on-device inference (cloud only, no fallback)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splitrl.env import features as F
from splitrl.env import heat
from splitrl.env.cost import action_cost
from splitrl.env.scenario import load_scenario_dict, make
from splitrl.env.scenario_sections import ScenarioError
from splitrl.env.slot import estimated_conditions
from splitrl.env.types import Action

BATTERY = "battery_s23_outages"


def _run(env, params, boundary, key=0, steps=200):
    action = Action(boundary=jnp.int32(boundary), fmt=jnp.int32(0), units=jnp.zeros(env.n_units, jnp.int32))

    def step(state, k):
        _, new, _, _, info = env.step_env(k, state, action, params)
        return new, (state.soc, new.soc, info["energy"], info["served"], info["latency"], info["z_battery"],
                     info["boundary"], info["request_failed"], info["connected"])

    state = env.reset(jax.random.PRNGKey(key), params)[1]
    _, out = jax.lax.scan(step, state, jax.random.split(jax.random.PRNGKey(key + 7), steps))
    return state, [np.asarray(x) for x in out]


def _low(params, soc=0.056):
    return params.replace(battery=params.battery.replace(start_lo=jnp.float32(soc), start_hi=jnp.float32(soc)))


def test_the_battery_drains_by_the_slots_edge_energy_and_z_b_tracks_overspending():
    env, params = make(BATTERY)
    params = _low(params, 0.06)
    assert env.battery and env.obs_dim == len(F.FEATURES) + 2
    b = params.battery
    state, (soc, soc_next, energy, served, latency, zb, _, _, _) = _run(env, params, env.n_layers)
    np.testing.assert_allclose(float(state.soc), 0.06, rtol=1e-6)
    allow = float(state.battery_allow_j)
    np.testing.assert_allclose(allow, (float(state.soc) - float(b.floor)) * float(b.capacity_j) / 200, rtol=1e-5)
    slot_j = np.asarray(heat.slot_power(params.costs.power_idle_w, params.slot_s, served, latency, energy)) * float(params.slot_s)
    np.testing.assert_allclose(soc - soc_next, slot_j / float(b.capacity_j), rtol=1e-3, atol=1e-9)
    assert (np.diff(soc) <= 0).all()
    # Z_B grows only while the slot spends more than the even allowance
    dz = np.diff(np.concatenate([[0.0], zb]))
    assert (dz[slot_j < allow] <= 1e-6).all() and zb.max() > 0


def test_at_the_floor_the_phone_runs_nothing_itself():
    env, params = make(BATTERY)
    params = _low(params)
    _, (soc, _, _, _, _, _, boundary, failed, connected) = _run(env, params, env.n_layers, steps=400)
    dead = soc <= float(params.battery.floor)
    assert dead.any() and (~dead).any()
    assert (boundary[dead] == 0).all() and (boundary[~dead] > 0).all()      # edge-only asked: cloud only once dead
    # a dead phone cannot fall back when the link is down: those requests fail
    assert (failed[dead & (connected < 0.5)] == 1).all()
    state = env.reset(jax.random.PRNGKey(0), params)[1]
    cond = estimated_conditions(state.replace(soc=params.battery.floor), params).replace(connected=jnp.float32(1.0))
    m = action_cost(params, jnp.int32(env.n_layers), jnp.int32(0), jnp.zeros(env.n_units, jnp.int32), 64.0, 16.0, cond)
    assert float(m["edge_compute_s"]) == 0.0 and float(m["cloud_prefill_s"]) > 0


def test_without_a_battery_nothing_drains_and_nothing_is_traced():
    env, params = make("heat_s23_3g_bus")
    assert not env.battery
    state, (soc, _, _, _, _, zb, _, _, _) = _run(env, params, env.n_layers, steps=50)
    assert (soc == 1.0).all() and (zb == 0.0).all()


def test_a_bad_battery_section_names_the_field():
    data, _ = load_scenario_dict(BATTERY)
    with pytest.raises(ScenarioError, match=r"battery\.start_soc"):
        make(data | {"battery": {"enabled": True, "start_soc": [0.04, 0.08], "floor": 0.05}})
    with pytest.raises(ScenarioError, match=r"battery\.enabled"):
        make(data | {"edge": "jetson-orin-nx-16gb"})
    with pytest.raises(ScenarioError, match=r"battery\.floor"):
        make(data | {"battery": {"enabled": True, "start_soc": [0.5, 0.8], "floor": 1.5}})


def test_the_runtime_refuses_a_policy_trained_on_a_battery(tmp_path):
    from splitrl.runtime.policy import OnnxPolicy, PolicyMismatch
    from tests.test_harness_export import export_random
    _, report, *_ = export_random(tmp_path, BATTERY)
    with pytest.raises(PolicyMismatch, match="battery"):
        OnnxPolicy(report["onnx"], model_name="gpt2-xl")


def test_battery_dpp_keeps_a_reserve_and_is_tuned_on_training_episodes():
    """battery_dpp at reserve 0 is myopic DPP; with a reserve above the charge left per slot left it plays
    cloud-only where myopic DPP keeps work on the phone, and not while the charge is ample; splitrl-eval
    picks its reserve by the least objective on training episodes, and evaluates it only on a battery."""
    import dataclasses

    from splitrl.baselines import make_baseline
    from splitrl.evaluation.run import EvalConfig, evaluate, tune_battery_reserve
    env, params = make("battery_s23_lowcharge")
    myopic, keep = make_baseline("myopic_dpp").bind(env, params), make_baseline("battery_dpp").bind(env, params)
    cand, pp = myopic.init(env, params), keep.init(env, params)
    act = jax.jit(lambda pp, s: keep(pp, None, None, s, params, None))
    want_of = jax.jit(lambda s: myopic(cand, None, None, s, params, None))
    _, state = env.reset(jax.random.PRNGKey(0), params)
    floor, cap = float(params.battery.floor), float(params.battery.capacity_j)
    kept = 0
    for soc in (0.052, 0.055, 0.059):
        for t in (0, 150):
            s = state.replace(soc=jnp.float32(soc), time=jnp.int32(t), z_battery=jnp.float32(5.0))
            want = want_of(s)
            assert int(act(pp, s).boundary) == int(want.boundary)                       # reserve 0: myopic DPP
            per_slot = (soc - floor) * cap / (200 - t)
            a = act(pp | {"reserve_j": jnp.float32(per_slot * 1.01)}, s)                # short: cloud-only
            assert int(a.boundary) == 0 and int(a.units.sum()) == 0
            b = act(pp | {"reserve_j": jnp.float32(per_slot * 0.99)}, s)                # enough: myopic DPP
            assert int(b.boundary) == int(want.boundary)
            kept += int(want.boundary) > 0
    assert kept > 0                                       # the cloud-only picks above are the reserve's, not DPP's
    cfg = EvalConfig(policies=("battery_dpp",), runs=(), scenarios=("battery_s23_lowcharge",), seeds=1, episodes=2,
                     steps=4, splitllm_sla_factor=1.0, chen_lam=1.0, chen_timesteps=0, plot_policies=(),
                     battery_dpp_reserves_j=(0.0, 1e6))
    tuned_pp, row = tune_battery_reserve(env, keep, params, pp, "battery_s23_lowcharge", cfg, 4)
    scores = row["battery_reserve_scores"]
    assert set(scores) == {0.0, 1e6} and row["battery_reserve_j"] == min(scores, key=scores.get)
    assert float(tuned_pp["reserve_j"]) == row["battery_reserve_j"]
    rows, _ = evaluate(dataclasses.replace(cfg, scenarios=("default",)), log=lambda *_: None)
    assert rows == []                                     # no battery: no battery_dpp row (it is myopic DPP there)


def test_the_battery_experiment_is_the_documented_training_command():
    """`+experiment=battery` is the documented recipe (γ = 0.99 and 3 M steps, a whole number of updates) and
    leaves the scenario to the command line."""
    from hydra import compose, initialize_config_dir

    from splitrl.training.train import CONF_DIR
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        experiment = compose(config_name="train", overrides=["+experiment=battery", "scenario=battery_s23_lowcharge"])
        command = compose(config_name="train", overrides=["scenario=battery_s23_lowcharge", "agent.gamma=0.99",
                                                          "agent.total_timesteps=3072000"])
    assert experiment == command and experiment.scenario.id == "battery-s23-lowcharge-v1"
    a = experiment.agent
    assert a.total_timesteps % (a.num_envs * a.num_steps) == 0
