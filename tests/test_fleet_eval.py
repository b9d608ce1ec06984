"""The fleet evaluation (splitrl/evaluation/fleet.py) and the wait-threshold rule (splitrl/baselines/
threshold.py): the rule's two sides, SplitLLM's plan per device type on the params the fleet uses,
unanswered requests in the percentiles, and rows with every metric and its interval from a tiny fleet (2
devices, a few slots: two compiles); `splitrl-train fleet=...` on that fleet and its run evaluated beside
cloud-only (`--runs`); `+experiment=fleet_llama_peak` composes the documented training command; the
full-information fleet oracle prices each device's true slot and acts on the rollout's env key."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from splitrl.baselines import ScenarioSpec
from splitrl.baselines.splitllm import SplitLLMDP
from splitrl.baselines.threshold import WaitThreshold
from splitrl.env.fleet_scenario import load_fleet_dict, make_fleet, make_fleet_with_info
from splitrl.env.scenario import load_scenario_dict, make_with_info
from splitrl.evaluation import fleet as FE
from splitrl.evaluation.plots import plot_fleet
from splitrl.training.rundir import RunDir
from splitrl.training.train import CONF_DIR, run


@pytest.fixture(scope="module")
def tiny():
    data = load_fleet_dict("llama-2-7b_1xa100_peak")[0]
    return data | {"n_devices": 2, "channel": {"cells": 1, "correlation": 0.0}}


def test_threshold_rule_offloads_below_and_keeps_on_the_edge_above(tiny):
    env, params = make_fleet(tiny)
    pparams = FE.init_per_device(WaitThreshold(4.0), env, params)
    _, state = env.reset(jax.random.PRNGKey(0), params)
    policy = jax.vmap(WaitThreshold(), (0, None, 0, 0, 0, None))
    fits = np.asarray(params.device.costs.boundary_mask[:, -1])
    assert fits.tolist() == [False, True]        # a Galaxy S23 cannot hold LLaMA-2-7B alone, a Jetson can
    for wait, cloud in ((0.0, True), (3.9, True), (4.0, False), (60.0, False)):
        dev = state.device.replace(cloud_wait_est=jnp.full(env.n_devices, wait, jnp.float32))
        a = policy(pparams, None, None, dev, params.device, None)
        on_edge = np.zeros(2, bool) if cloud else fits       # above the threshold only the Jetson stays local
        np.testing.assert_array_equal(np.asarray(a.boundary), np.where(on_edge, env.n_layers, 0), err_msg=str(wait))
        assert (np.asarray(a.units).all(-1) == on_edge).all(), wait


def _replayed_scenario(name: str, rate: float, prompt: int, output: int):
    """A device scenario as docs/fleet.md ("The workload") says trace replay changes it, restated here
    rather than taken from the fleet builder so that the test checks the builder: the fleet's arrival
    rate, one request class at the trace's mean clipped request, KV context the trace's longest clipped
    request (4,096 tokens for LLaMA-2-7B)."""
    data = copy.deepcopy(load_scenario_dict(name)[0])
    data["workload"] |= {"arrival_rate": rate, "classes": [{"name": "mean", "prob": 1.0, "prompt": [prompt, prompt],
                                                             "output": [output, output]}]}
    return make_with_info(data | {"context": 4096})


def test_splitllm_plans_once_per_device_type_on_the_params_the_fleet_uses(tiny):
    env, params, info = make_fleet_with_info(tiny)
    policy = SplitLLMDP(sla_factor=2.0, n_bins=6)   # an SLA loose enough that the two types' plans differ
    plan = FE.init_per_device(policy, env, params, info=info)
    assert info.device_type.tolist() == [0, 1]
    for i, entry in enumerate(tiny["devices"]):
        single = _replayed_scenario(entry["scenario"], tiny["workload"]["rate_per_device"], round(info.mean_prompt),
                                    round(info.mean_output))
        want = policy.init(single[0], single[1], ScenarioSpec(entry["scenario"], None, single[2]))
        for k in ("boundary", "units", "sla_met"):
            np.testing.assert_array_equal(np.asarray(plan[k][i]), np.asarray(want[k]), err_msg=f"device {i}: {k}")
    assert not np.array_equal(plan["boundary"][0], plan["boundary"][1])   # a Galaxy S23 and a Jetson plan apart
    # the raw scenario file (chat classes, a 1,056-token context) plans otherwise on the S23
    raw = make_with_info(tiny["devices"][0]["scenario"])
    assert not np.array_equal(policy.init(raw[0], raw[1], ScenarioSpec("raw", None, raw[2]))["boundary"],
                              plan["boundary"][0])


def _out(times, arrivals, failed, drops):
    """A fake rollout output: one slot, one fleet, the given devices' response times and outcomes."""
    shape = (1, 1, len(times))
    f = lambda x: np.asarray(x, np.float64).reshape(shape)  # noqa: E731
    return {"response_time": f(times), "arrivals": f(arrivals), "request_failed": f(failed), "drops": f(drops)}


def test_unanswered_requests_count_in_the_percentiles():
    # 20 requests: 18 answered in 1 s, one dropped at a full queue, one of a failed request type -> 10 % +inf
    out = _out([1.0, 1.0, 1.0], [10, 8, 2], [0, 0, 1], [1, 0, 0])
    times, answered = FE.request_times(out)
    assert times.size == 20 and answered.sum() == 17 and np.isinf(times).sum() == 3
    assert FE._pct(times, 50) == 1.0 and np.isinf(FE._pct(times, 95))
    assert np.isinf(FE.p95_spread(out))          # the third device never answers, the first two do
    assert FE.p95_spread(_out([1.0, 3.0], [5, 5], [0, 0], [0, 0])) == pytest.approx(2.0)


def test_evaluation_rows_have_every_metric_with_an_interval(tiny, tmp_path):
    rows, raw = FE.evaluate_fleet(tiny, ("cloud_only", "wait_threshold"), seeds=2, episodes=1, steps=6,
                                  grid=(1.0, 30.0), train_seeds=1, log=lambda *_: None)
    assert [r["policy"] for r in rows] == ["cloud_only", "wait_threshold"]
    for r in rows:
        for m in FE.METRICS:
            assert m in r and f"{m}_ci" in r, m
        assert r["seeds"] == 2 and 0 <= r["cloud_util"] <= 1 and np.isfinite(r["objective"])
    thr = rows[1]
    assert thr["threshold_s"] in (1.0, 30.0) and set(thr["tuning"]) == {1.0, 30.0}
    assert thr["tuning"][thr["threshold_s"]] == min(thr["tuning"].values())
    assert thr["threshold_s"] == max(t for t, v in thr["tuning"].items() if v == min(thr["tuning"].values()))
    assert rows[0]["offloaded"] == 1.0 and len(raw["cloud_only"]) == 2
    assert rows[0]["objective_vs_cloud_only"] == 0.0 and "objective_vs_cloud_only_ci" in thr
    md = FE.markdown(rows)
    assert "| cloud_only | 0 ± 0 | – | " in md and "τ = " in md and "objective − myopic_dpp (paired)" in md
    assert "| row − column | cloud_only | " in md and "| cloud_only | · | " in md    # every pair, paired
    (tmp_path / "results.json").write_text(json.dumps(rows, default=float))
    (tmp_path / "results.md").write_text("stale")
    FE.main(["--render", str(tmp_path / "results.json")])            # the table again, without rollouts
    assert (tmp_path / "results.md").read_text() == md
    paths = plot_fleet("tiny", raw, tmp_path, make_fleet(tiny)[0].n_layers)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)


TINY_FLEET = ["fleet.n_devices=2", "fleet.channel.cells=1", "agent.num_envs=2", "agent.num_steps=4",
              "agent.total_timesteps=16", "agent.num_minibatches=2", "agent.update_epochs=1", "agent.guide_states=4",
              "updates_per_chunk=2", "checkpoint_every=0", "progress=false", "logger=disabled", "eval_episodes_envs=0"]


def test_splitrl_train_fleet_writes_a_run_the_fleet_evaluation_reads(tiny, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["fleet=llama-2-7b_1xa100_peak", *TINY_FLEET])
    summary = run(cfg, tmp_path)
    assert summary["updates"] == 2
    rd = RunDir.read(tmp_path)
    assert rd.fleet_id == "fleet-llama-2-7b-1xa100-peak-v2" and rd.scenario is None
    assert (tmp_path / "final_params.msgpack").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "env/cloud_util" in rows[-1] and "env/latency" in rows[-1]
    out, raw = FE.evaluate_fleet(tiny, ("cloud_only",), seeds=2, episodes=1, steps=4, grid=(), train_seeds=1,
                                 log=lambda *_: None, runs=[str(tmp_path), f"tiny={tmp_path}"])
    trained = out[1]
    assert trained["policy"].startswith("trained:") and trained["trained_on"] == rd.fleet_id
    assert out[2]["policy"] == "trained:tiny" and out[2]["objective"] == trained["objective"]   # LABEL=DIR
    assert np.isfinite(trained["objective"]) and "objective_vs_cloud_only" in trained
    assert raw[trained["policy"]][0]["boundary"].shape == (4, 1, 2)   # [slots, fleets, devices]
    # the shared policy exported for one device: its contract numbers, what the edge runtime runs
    from splitrl.env.features import EDGE_RATIO_SCALE
    from splitrl.env.tables import edge_cloud_ratio
    from splitrl.export.onnx import ExportError, export_run
    from splitrl.runtime.policy import OnnxPolicy
    env, params, info = make_fleet_with_info(tiny)
    report = export_run(tmp_path, tmp_path / "device1.onnx", check=8, device=1)   # parity checked inside
    kind = info.devices[int(info.device_type[1])]
    assert report["model"] == kind.model and report["scenario"].endswith(f"/device1:{kind.id}")
    policy = OnnxPolicy(tmp_path / "device1.onnx")
    assert policy.meta.features[-1].name == "edge_ratio"
    ratio = float(edge_cloud_ratio(jax.tree.map(lambda x: x[1], params.device.costs)))
    assert policy.meta.raw_defaults["edge_cloud_ratio"] == pytest.approx(ratio, rel=1e-6)
    feats = policy.observe(bw_bytes_s=2e6, rtt_s=0.05, prompt_len=512, output_len=64, cloud_wait=1.0)
    assert feats[-1] == pytest.approx(np.log(ratio) * EDGE_RATIO_SCALE, rel=1e-5)
    with pytest.raises(ExportError, match="--device 5: the fleet .* has devices 0..1"):
        export_run(tmp_path, tmp_path / "no.onnx", check=0, device=5)


def test_the_fleet_experiment_is_the_documented_training_command():
    """`+experiment=fleet_llama_peak` composes exactly the command docs/fleet.md trains the fleet policy with."""
    documented = ("fleet=llama-2-7b_1xa100_peak fleet.cloud.toll=3000.0 agent.num_envs=16 agent.total_timesteps=409600 "
                  "agent.team_spirit=0.0 agent.guide_congestion=1000.0 agent.guide_final=0.1 agent.pretrain_rounds=6 "
                  "agent.gamma=0.995 updates_per_chunk=10 eval_episodes_envs=0").split()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        experiment = compose(config_name="train", overrides=["+experiment=fleet_llama_peak"])
        command = compose(config_name="train", overrides=documented)
    assert experiment == command and experiment.agent.gamma == 0.995


def test_fleet_dpp_charges_the_cloud_drift_its_offloaded_work_adds(tiny):
    """With an infinite reference queue the cloud's drift vanishes and fleet DPP is myopic DPP; with a long
    published queue it never offloads more cloud work than myopic DPP (it minimises the same objective plus
    a charge that grows with that work), and a higher congestion price never more than fleet DPP."""
    from splitrl.env.dpp import candidate_actions, candidate_costs, fleet_myopic_action, myopic_action
    from splitrl.env.slot import estimated_conditions, slot_queues
    env, params = make_fleet(tiny)
    _, state = env.reset(jax.random.PRNGKey(3), params)
    @jax.jit
    def work(a, p, s):
        one = jax.tree.map(lambda x: x[None], a)
        m = candidate_costs(p, one, s.prompt_len, s.output_len, estimated_conditions(s, p))
        q = slot_queues(p, s, m, p.workload.arrival_rate * p.slot_s)
        return (q["served"] * (m["cloud_prefill_s"] + m["cloud_decode_s"]))[0]

    fleet, mine = jax.jit(fleet_myopic_action), jax.jit(myopic_action)   # compiled once for every device
    for i in range(env.n_devices):
        p_i, s_i = jax.tree.map(lambda x, i=i: x[i], params.device), jax.tree.map(lambda x, i=i: x[i], state.device)
        cands = candidate_actions(env.device, p_i, layer_only=True)
        same = jax.tree.map(lambda a, b: bool(jnp.all(a == b)), fleet(p_i, s_i, cands, 1.0, 1e12, 1.0), mine(p_i, s_i, cands))
        assert all(jax.tree.leaves(same))
        busy = s_i.replace(cloud_wait_est=jnp.float32(60.0), backlog=jnp.float32(3.0))
        fleet_choice, own_choice = fleet(p_i, busy, cands, 1.0, 10.0, 1.0), mine(p_i, busy, cands)
        assert float(work(fleet_choice, p_i, busy)) <= float(work(own_choice, p_i, busy)) + 1e-6
        priced = fleet(p_i, busy, cands, 1.0, 10.0, 1.0, 1000.0)   # congestion_dpp's price
        assert float(work(priced, p_i, busy)) <= float(work(fleet_choice, p_i, busy)) + 1e-6


def test_the_fleet_oracle_prices_each_devices_true_slot_and_rolls_out_on_the_env_key():
    """FleetOracle reads the slot the env will draw: stepping the fleet with the slot's key, where device i
    plays candidate k and the others anything, gives device i the own objective (its objective less its
    1/N share of the cloud drift) and the offloaded work the oracle computed for (i, k); its choice is the
    argmin of own + κ · charge; another key prices differently (the check has teeth); and in
    `fleet_rollout` it acts on the very key step_env is given (its recorded slot is its computed least)."""
    from splitrl.env.fleet import cloud_lyapunov, fixed_action
    from splitrl.evaluation.run import episode_keys
    data = load_fleet_dict("llama-2-7b_1xa100_peak")[0] | {"n_devices": 4, "channel": {"cells": 2, "correlation": 0.5}}
    env, params = make_fleet(data)
    n, kappa = env.n_devices, 30.0
    oracle = FE.make_policy("fleet_oracle", params=params, congestion=kappa)
    pparams = FE.init_per_device(oracle, env, params)
    cands = pparams["candidates"]
    step = jax.jit(env.step_env)
    _, state = env.reset(jax.random.PRNGKey(0), params)
    for t in range(3):   # a few random slots: queues, a cloud queue, a link history
        k1, k2 = jax.random.split(jax.random.PRNGKey(10 + t))
        a = fixed_action(env, 0).replace(boundary=jax.random.randint(k1, (n,), 0, env.n_layers + 1))
        state = step(k2, state, a, params)[1]
    # four devices leave the cloud idle: queue some work (the wait W / C every device meets this slot)
    state = state.replace(cloud=state.cloud.replace(work=jnp.float32(20.0) * params.cloud.replicas))
    key = jax.random.PRNGKey(7)
    # one compile: (own, charge) and the choice
    objectives = jax.jit(lambda s, k: (oracle.objectives(env, pparams, s, params, k),
                                       oracle.fleet_action(env, pparams, s, params, k)))
    (own, charge), choice = objectives(state, key)
    best = np.argmin(np.asarray(own + kappa * charge), axis=1)
    np.testing.assert_array_equal(np.asarray(choice.boundary), np.asarray(cands.boundary)[np.arange(n), best])
    ref = float(params.cloud.replicas * params.cloud.wait_ref_s)
    W, K = float(state.cloud.work), cands.boundary.shape[1]
    base = fixed_action(env, 0)
    for i in range(n):
        for k in sorted({0, K // 3, K - 1, int(best[i])}):
            a = jax.tree.map(lambda b, c, i=i, k=k: b.at[i].set(c[i, k]), base, cands)
            info = step(key, state, a, params)[4]
            mine = float(info["objective"][i] - info["cloud_drift"] / n)
            assert mine == pytest.approx(float(own[i, k]), rel=1e-5, abs=1e-5), (i, k)
            work = float(info["cloud_work"][i])
            assert (W * work + 0.5 * work**2) / ref**2 == pytest.approx(float(charge[i, k]), rel=1e-5, abs=1e-9)
    assert not np.allclose(np.asarray(objectives(state, jax.random.PRNGKey(8))[0][0]), np.asarray(own))

    # in the rollout: one slot from the reset, κ = 0; the recorded own objective is the least the oracle computed
    plain = FE.make_policy("fleet_oracle", params=params, congestion=0.0)
    pp0 = FE.init_per_device(plain, env, params)
    assert np.array_equal(np.asarray(pp0["candidates"].boundary), np.asarray(cands.boundary))
    ek, pk = episode_keys("oracle-test", 0, 1)
    out = FE.fleet_rollout(env, plain, params, pp0, ek, pk, 1)
    reset_key, root = jax.random.split(ek[0])
    _, s0 = env.reset(reset_key, params)
    own0 = np.asarray(objectives(s0, jax.random.fold_in(root, 0))[0][0])   # the same candidates; own is κ-free
    drift = float(cloud_lyapunov(params, out["cloud_queue_s"][0, 0]))
    np.testing.assert_allclose(np.asarray(out["objective"][0, 0]) - drift / n, own0.min(axis=1), rtol=1e-5, atol=1e-5)
