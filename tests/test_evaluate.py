"""splitrl-eval: one row per (policy, scenario), numbers from the env's info, common random numbers,
confidence intervals, tables, claims and plots."""

import json
import math

import jax
import numpy as np
import pytest

from splitrl.baselines import CloudOnly
from splitrl.config import ConfigError
from splitrl.env import Action
from splitrl.evaluation.plots import plot_all
from splitrl.evaluation.report import claims, write_tables
from splitrl.evaluation.run import EvalConfig, episode_keys, evaluate, scenario_spec, typed_config
from splitrl.evaluation.stats import t_interval

POLICIES = ("cloud_only", "edge_only", "random")


@pytest.fixture(scope="module")
def small():
    cfg = EvalConfig(policies=POLICIES, runs=(), scenarios=("default",), seeds=2, episodes=2, steps=6,
                     splitllm_sla_factor=1.0, chen_lam=1.0, chen_timesteps=640, plot_policies=())
    rows, raw = evaluate(cfg, log=lambda *_: None)
    return cfg, rows, raw


def test_one_row_per_policy_and_scenario(small):
    cfg, rows, _ = small
    assert [(r["scenario"], r["policy"]) for r in rows] == [("default", p) for p in POLICIES]
    for r in rows:
        assert all(math.isfinite(r[k]) for k in r if isinstance(r[k], float))
        assert r["latency_p50"] <= r["latency_p95"] <= r["latency_p99"]


def test_numbers_come_from_the_envs_info(small):
    """cloud_only's row equals statistics of the env's info from a hand-written loop over env.step_env
    with the same keys: service times per slot, and response times per request (each arrival waits,
    then is served; dropped or failed ones never answered)."""
    _, rows, raw = small
    env, params, spec = scenario_spec("default")
    lat, q, answered_times, unanswered = [], [], [[], []], [0, 0]
    for seed in range(2):
        ek, _ = episode_keys("default", seed, 2)
        for k in ek:
            k_reset, k_steps = jax.random.split(k)
            _, state = env.reset_env(k_reset, params)
            for t in range(6):
                a = Action(boundary=np.int32(0), fmt=np.int32(0), units=np.zeros(env.n_units, np.int32))
                _, state, _, _, info = env.step_env(jax.random.fold_in(k_steps, t), state, a, params)
                lat.append(float(info["latency"]))
                q.append(float(info["backlog"]))
                n, lost = int(round(float(info["arrivals"]))), int(round(float(info["drops"])))
                ok = 0 if float(info["request_failed"]) else n - min(lost, n)
                answered_times[seed] += [float(info["response_time"])] * ok
                unanswered[seed] += n - ok
    np.testing.assert_allclose(raw["default", "cloud_only"]["latency"].ravel(), lat, rtol=1e-5)
    row = rows[0]
    assert all(answered_times)                                              # per seed, then the mean over seeds
    assert row["latency_mean"] == pytest.approx(np.mean([np.mean(t) for t in answered_times]), rel=1e-5)
    assert row["fail_rate"] == pytest.approx(np.mean([u / (len(t) + u) for t, u in zip(answered_times, unanswered,
                                                                                                    strict=True)]))
    assert row["service_p95"] == pytest.approx(np.mean([np.percentile(lat[:12], 95), np.percentile(lat[12:], 95)]),
                                               rel=1e-5)
    assert row["backlog_max"] == pytest.approx(np.mean([max(q[:12]), max(q[12:])]), rel=1e-5)


def test_every_policy_meets_the_same_channel_and_arrivals(small):
    _, _, raw = small
    ref = raw["default", "cloud_only"]
    for p in POLICIES[1:]:
        np.testing.assert_array_equal(raw["default", p]["bandwidth"], ref["bandwidth"])
        np.testing.assert_array_equal(raw["default", p]["arrivals"], ref["arrivals"])
    assert not np.array_equal(raw["default", "edge_only"]["latency"], ref["latency"])


def test_t_interval_by_hand():
    mean, half = t_interval(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 * 1.0 / math.sqrt(3))
    assert t_interval(np.array([5.0])) == (5.0, 0.0)


def test_tables_claims_and_plots_are_written(small, tmp_path):
    _, rows, raw = small
    paths = write_tables(rows, tmp_path)
    assert len(paths["csv"].read_text().strip().splitlines()) == len(rows) + 1
    assert len(json.loads(paths["json"].read_text())) == len(rows)
    md = paths["md"].read_text()
    assert all(f"| {p}" in md for p in POLICIES)
    pngs = plot_all(rows, raw, tmp_path / "plots")
    assert {p.name for p in pngs} == {"latency_cdf_default.png", "partition_default.png", "objective_by_scenario.png"}
    assert all(p.stat().st_size > 10_000 for p in pngs)


def test_claims_ratios():
    base = {"model": "m", "edge": "e"}
    rows = [base | {"scenario": "splitwise_x", "policy": p, "latency_mean": lat, "latency_p95": p95, "energy": en}
            for p, lat, p95, en in (("hppo", 1.0, 2.0, 6.0), ("static_split", 2.0, 3.0, 10.0),
                                    ("splitllm_dp", 1.5, 3.0, 8.0), ("cloud_only", 3.0, 5.0, 4.0))]
    (c,) = claims(rows)
    assert c["policy"] == "hppo" and c["latency_ratio_min"] == 1.5 and c["latency_ratio_max"] == 2.0
    assert c["energy_saving_max"] == pytest.approx(0.4) and c["energy_saving_vs"] == "static_split"
    assert c["p95_reduction_vs_cloud"] == pytest.approx(0.6)


def test_config_errors_name_the_field(tmp_path):
    good = {"policies": ["cloud_only"], "runs": [], "scenarios": ["default"], "seeds": 1, "episodes": 1, "steps": 0,
            "splitllm_sla_factor": 1.0, "chen_lam": 1.0, "chen_timesteps": 640, "plot_policies": [],
            "heat_dpp_margins": [0, 2.5], "battery_dpp_reserves_j": [0, 3]}
    assert typed_config(good).policies == ("cloud_only",) and typed_config(good).heat_dpp_margins == (0.0, 2.5)
    assert typed_config(good).battery_dpp_reserves_j == (0.0, 3.0)
    for k in ("heat_dpp_margins", "battery_dpp_reserves_j"):
        for bad in ([], "4", [1, "x"], [float("nan")]):
            with pytest.raises(ConfigError, match=f"{k} = .*non-empty list of numbers"):
                typed_config(good | {k: bad})
    with pytest.raises(ConfigError, match="unknown"):
        typed_config(good | {"policies": ["neurosurgeon"]})
    with pytest.raises(ConfigError, match="config runs: .*no resolved_config.yaml; give the directory of a splitrl-train run"):
        typed_config(good | {"runs": [str(tmp_path)]})
    with pytest.raises(ConfigError, match="unknown key"):
        typed_config(good | {"episode": 3})
    assert CloudOnly().name == "cloud_only"


def test_paired_difference_is_seed_by_seed():
    """The paired interval is over per-seed differences: a policy that is 0.1 better on every seed is
    'better' even though the seeds themselves spread far wider than 0.1; the matrix of every pair words it
    the same way."""
    from splitrl.evaluation.report import comparison_markdown, paired_cell, paired_matrix
    from splitrl.evaluation.stats import add_paired
    base = {"scenario": "s", "model": "m", "edge": "e", "seeds": 3, "episodes": 1, "steps": 1, "edge_fits": True}
    seeds = {"myopic_dpp": [1.0, 2.0, 3.0], "hppo": [0.9, 1.9, 2.9], "cloud_only": [1.0, 2.5, 2.0],
             "oracle_dpp": [0.5, 1.5, 2.5]}
    rows = [base | {"policy": p, "objective_seeds": v, **{m: float(np.mean(v)) for m in
            ("objective", "latency_p95", "latency_p99", "energy", "delta_ppl")},
            **{f"{m}_ci": 1.0 for m in ("objective", "latency_p95", "latency_p99", "energy", "delta_ppl")}}
            for p, v in seeds.items()]
    add_paired(rows)
    hppo = rows[1]
    assert hppo["objective_vs_myopic_dpp"] == pytest.approx(-0.1) and hppo["objective_vs_myopic_dpp_ci"] == pytest.approx(0, abs=1e-12)
    assert paired_cell(hppo, "myopic_dpp").endswith("(better)")
    d, h = t_interval(np.array(seeds["hppo"]) - np.array(seeds["cloud_only"]))
    assert hppo["objective_vs_cloud_only"] == pytest.approx(d) and hppo["objective_vs_cloud_only_ci"] == pytest.approx(h)
    assert paired_cell(hppo, "cloud_only").endswith("(tie)")
    assert paired_cell(rows[0], "myopic_dpp") == "·"
    md = comparison_markdown(rows)
    assert "| s | 1.9 ± 1 | 2 ± 1 | 1.83 ± 1 | 1.5 ± 1 | -0.1 ± " in md and "(better) | 0.0667 ± 1.9 (tie) |" in md
    assert "oracle gain over cloud_only" in md and "18.2 %" in md
    matrix = paired_matrix(rows)     # every pair, read along a row
    assert matrix[0] == "| row − column | myopic_dpp | hppo | cloud_only | oracle_dpp |" and len(matrix) == 2 + len(rows)
    assert matrix[3].startswith("| hppo | -0.1 ± ") and "(better) | · | 0.0667 ± 1.9 (tie) | 0.4 ± " in matrix[3]
    assert matrix[3].endswith("(worse) |") and matrix[2].startswith("| myopic_dpp | · | 0.1 ± ")


def test_state_metrics_are_paired_with_their_direction():
    """A stateful scenario's own metric is paired like the objective, and worded by its direction: less time
    throttled is better, more charge left is better; a metric every policy reads the same (no conversations
    here: 0 KV moved) gets no cell, and a scenario without any state gets no line."""
    from splitrl.evaluation.report import comparison_markdown
    from splitrl.evaluation.stats import METRICS, STATE_METRICS, add_paired
    base = {"scenario": "s", "model": "m", "edge": "e", "seeds": 3, "episodes": 1, "steps": 1, "edge_fits": True}
    per = {"myopic_dpp": ([1.0, 2.0, 3.0], [0.8, 0.7, 0.9], [0.06, 0.05, 0.07]),
           "hppo": ([0.9, 1.9, 2.9], [0.6, 0.5, 0.8], [0.07, 0.06, 0.08]),
           "cloud_only": ([1.0, 2.5, 2.0], [0.1, 0.7, 0.3], [0.06, 0.05, 0.07]),
           "oracle_dpp": ([0.5, 1.5, 2.5], [0.8, 0.7, 0.9], [0.06, 0.05, 0.07])}
    rows = []
    for p, (obj, thr, soc) in per.items():
        seeds = {"objective": obj, "throttled": thr, "soc_end": soc, "temp_max": [40.0] * 3,
                 "migration_mb": [0.0] * 3, "soc_min": soc}
        rows.append(base | {m: 1.0 for m in METRICS} | {f"{m}_ci": 0.1 for m in METRICS} | {"policy": p}
                    | {f"{m}_seeds": v for m, v in seeds.items()} | {m: float(np.mean(v)) for m, v in seeds.items()})
    add_paired(rows)
    hppo = rows[1]
    assert hppo["throttled_vs_myopic_dpp"] == pytest.approx(-0.5 / 3) and set(STATE_METRICS) <= {
        k.removesuffix("_vs_myopic_dpp") for k in hppo}
    md = comparison_markdown(rows)
    line = next(ln for ln in md.splitlines() if ln.startswith("s, hppo − myopic_dpp (paired): "))
    assert "throttled (share of slots) -0.167 ± " in line and "(better); charge at the end 0.01 ± " in line
    assert line.count("(better)") == 3 and "KV moved" not in line and "peak edge temp" not in line
    for r in rows:     # the same policies without any state: every one reads the same constants
        r.update({"throttled": 0.0, "soc_end": 1.0, "soc_min": 1.0})
    assert "(paired): " not in comparison_markdown(rows)


def test_a_run_needs_its_scenario(tmp_path):
    """A run trained on a scenario that is not among `scenarios` is an error naming the run and the fix,
    not an empty table."""
    from types import SimpleNamespace

    from splitrl.evaluation.run import _check_runs_have_scenarios
    cfg = SimpleNamespace(runs=("outputs/train/x",), scenarios=("default",))
    with pytest.raises(ConfigError, match="outputs/train/x was trained on scenario id 'other-v1'.*add its scenario"):
        _check_runs_have_scenarios(cfg, [SimpleNamespace(scenario_id=lambda: "other-v1")])
    _check_runs_have_scenarios(cfg, [SimpleNamespace(scenario_id=lambda: scenario_spec("default")[2].info.id)])


def test_seed_members_are_samples_only_when_seeds_alone_differ():
    from splitrl.baselines.trained import seed_members
    hp = {"lr": 3e-4, "ent_coef": 0.01, "reward_v": 1.0}
    assert seed_members([{"seed": 0, **hp}]) == 1
    assert seed_members([{"seed": s, **hp} for s in range(3)]) == 3
    assert seed_members([{"seed": 0, **hp}, {"seed": 0, **hp, "lr": 1e-3}]) == 1   # a grid: choices, not samples


def test_scaling_table_and_curves_from_runs(tmp_path):
    from splitrl.evaluation import scaling
    def row(policy, objs, **extra):
        return {"scenario": "s", "policy": policy, "seeds": 3, "episodes": 4, "objective": float(np.mean(objs)),
                "objective_ci": 0.1, "objective_seeds": objs, "latency_p95": 1.0, "latency_p95_ci": 0.1,
                "latency_p99": 2.0, "latency_p99_ci": 0.2, "return": -10 * float(np.mean(objs)), **extra}
    rows = [row("cloud_only", [1.0, 1.0, 1.0]), row("myopic_dpp", [1.2, 1.1, 1.3]), row("oracle_dpp", [0.8, 0.8, 0.8]),
            row(scaling.label(1_024_000), [1.0, 1.05, 1.1], budget=1_024_000, train_wall_s=61.0, train_seeds=3)]
    scaling.add_paired(rows)
    md = scaling.markdown(rows, "s", [1_024_000])
    assert "| hppo@1.024M | 1,024,000 |" in md and "(better)" in md and "3 training seeds" in md
    run = tmp_path / "s_1024000"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps({"seed": s, "train/env_steps": n, "train/episode_return": -n / 1e4})
                                                 for s in (0, 1) for n in (1e4, 1e5, 1e6)))
    png = scaling.plot_curves(rows, {1_024_000: run}, "s", tmp_path / "curve.png")
    assert png.stat().st_size > 10_000


def test_scaling_reuses_a_finished_run_only_when_it_matches(tmp_path, monkeypatch):
    from splitrl.evaluation import scaling
    run = tmp_path / "s_1024000"
    run.mkdir()
    (run / "final_params.msgpack").write_bytes(b"x")
    (run / "scaling.json").write_text(json.dumps({"scenario": "s", "budget": 1_024_000, "seeds": 3, "overrides": [],
                                                  "train_wall_s": 61.0}))
    calls = []
    monkeypatch.setattr(scaling.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or
                        type("Done", (), {"returncode": 0, "stdout": "", "stderr": ""})())
    assert scaling.train("s", 1_024_000, 3, run, []) == 61.0 and not calls            # reused
    scaling.train("s", 1_024_000, 3, run, ["agent.num_envs=64"])                     # other overrides: retrained
    scaling.train("s", 1_024_000, 1, run, [])                                        # other seeds: retrained
    assert len(calls) == 2 and json.loads((run / "scaling.json").read_text())["seeds"] == 1


def test_a_multi_seed_run_is_evaluated_member_by_member(tmp_path):
    """Evaluation seed s runs training member s mod n: a two-member run whose member 0 always picks
    cloud-only and member 1 edge-only scores, seed by seed, exactly what those two baselines score."""
    import yaml

    from splitrl.agents.networks import HierarchicalPolicy
    from splitrl.training.rundir import write_final_params

    from .conftest import CONF
    env, params, spec = scenario_spec("default")
    obs, _ = env.reset_env(jax.random.PRNGKey(0), params)
    net = HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, (16,), "separate")
    zero = jax.tree.map(lambda x: 0.0 * x, net.init(jax.random.PRNGKey(0), obs))

    def always(boundary):                           # every logit constant: greedy picks `boundary`, fp16, no edge units
        p = jax.tree.map(lambda x: x, zero)
        p["params"]["boundary_head"]["bias"] = p["params"]["boundary_head"]["bias"].at[boundary].set(10.0)
        p["params"]["format_head"]["bias"] = p["params"]["format_head"]["bias"].at[0].set(10.0)
        p["params"]["unit_head"]["bias"] = p["params"]["unit_head"]["bias"] - 10.0
        return p
    write_final_params(tmp_path, jax.tree.map(lambda a, b: np.stack([a, b]), always(0), always(env.n_layers)))
    agent = yaml.safe_load((CONF / "agent" / "hppo.yaml").read_text()) | {"name": "two", "hidden": [16], "critic": "separate"}
    (tmp_path / "resolved_config.yaml").write_text(yaml.safe_dump({"agent": agent, "scenario": {"id": spec.info.id}}))
    (tmp_path / "summary.json").write_text(json.dumps({"members": [{"seed": 0, "lr": 3e-4}, {"seed": 1, "lr": 3e-4}]}))
    cfg = EvalConfig(policies=("cloud_only", "edge_only"), runs=(str(tmp_path),), scenarios=("default",), seeds=4,
                     episodes=1, steps=6, splitllm_sla_factor=1.0, chen_lam=1.0, chen_timesteps=0, plot_policies=())
    rows, _ = evaluate(cfg, log=lambda *_: None)
    by = {r["policy"]: r for r in rows}
    run = next(r for r in rows if r["policy"] not in ("cloud_only", "edge_only"))
    assert run["train_seeds"] == 2
    want = [by["cloud_only" if s % 2 == 0 else "edge_only"]["objective_seeds"][s] for s in range(4)]
    np.testing.assert_allclose(run["objective_seeds"], want, rtol=1e-6)
    assert by["cloud_only"]["objective_seeds"][0] != by["edge_only"]["objective_seeds"][0]
