"""`splitrl-bench train` on a tiny budget: a table and a JSON with one row per measurement."""

import json

from splitrl.bench.cli import main


def test_bench_train_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["train", "--env-counts", "4", "--seed-counts", "1,2", "--updates", "2", "--skip", "hppo,rejax,sb3",
          "--out", str(out)])
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["num_envs"], r["num_seeds"]) for r in rows] == [(4, 1), (4, 2)]
    assert all(r["steps_per_s"] > 0 for r in rows)
    assert "steps/s" in capsys.readouterr().out


def test_bench_env_fleet_writes_device_steps_beside_cartpole(tmp_path, capsys):
    """A 4-device fleet (the file has 4 cells), 2 fleets x 3 steps: the fields are there and positive (no timing claims)."""
    out = tmp_path / "fleet.json"
    main(["env", "--fleet", "llama-2-7b_1xa100_low", "--fleet-devices", "4", "--envs", "2", "--steps", "3",
          "--repeats", "1", "--out", str(out)])
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert data["fleet"] == "llama-2-7b_1xa100_low" and (row["envs"], row["devices"]) == (2, 4)
    for field in ("device_steps_per_s", "cartpole_steps_per_s", "ratio", "compile_s", "cartpole_compile_s",
                  "peak_rss_mb"):
        assert row[field] > 0, field
    assert "fleet llama-2-7b_1xa100_low vs gymnax CartPole-v1" in capsys.readouterr().out


def test_bench_all_writes_one_json_with_the_machine_and_the_ratios(tmp_path, capsys):
    """The env part alone at 4 envs x 5 steps (the train and compile parts compile HPPO: tens of seconds).
    No timing claims: the fields are there, positive, and the run is marked done."""
    out = tmp_path / "all.json"
    main(["all", "--profile", "cpu", "--parts", "env", "--envs", "4", "--steps", "5", "--repeats", "1",
          "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["profile"] == "cpu" and data["done"] == ["env"] and data["running"] is None and not data["errors"]
    assert data["machine"]["platform"] == "cpu" and data["machine"]["jax"] and data["machine"]["command"].startswith(
        "splitrl-bench all --profile cpu --parts env")
    (row,) = data["env"]
    assert (row["envs"], row["steps"]) == (4, 5)
    for field in ("split_steps_per_s", "cartpole_steps_per_s", "ratio", "compile_s", "peak_rss_mb"):
        assert row[field] > 0, field
    assert data["ratios"] == {"split_over_cartpole_envs4": row["ratio"]}
    assert "split env vs gymnax CartPole-v1" in capsys.readouterr().out


def test_bench_all_ratios_pair_each_learner_with_rejax_at_equal_envs():
    from splitrl.bench.all import ratios
    rows = [{"what": "HPPO (default)", "num_envs": 4, "steps_per_s": 1.0},
            {"what": "flat PPO (CartPole-v1)", "num_envs": 4, "steps_per_s": 3.0},
            {"what": "rejax PPO (CartPole-v1)", "num_envs": 4, "steps_per_s": 4.0},
            {"what": "HPPO (default)", "num_envs": 8, "steps_per_s": 1.0}]   # no rejax at 8: no ratio
    assert ratios({"train": rows}) == {"hppo_over_rejax_envs4": 0.25, "flat_ppo_over_rejax_envs4": 0.75}


def test_random_policy_picks_each_allowed_boundary_and_only_allowed_units():
    """The bench's random policy (one word per env, its boundary by a running count): every allowed boundary
    about equally often, nothing masked; its word is jax.random.bits's."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from splitrl.bench.env import random_split_action
    from splitrl.env.draws import bits
    from splitrl.env.split_env import SplitEnv
    from splitrl.env.types import Observation

    env = SplitEnv(n_layers=6, n_units=3, channel_kind="gauss_markov")
    boundary_mask = jnp.array([True, False, True, True, False, False, True])
    unit_mask = jnp.array(np.random.default_rng(0).random((7, 3)) < 0.5)
    obs = Observation(features=jnp.zeros(1), boundary_mask=boundary_mask, format_mask=jnp.ones(3, bool),
                      unit_mask=unit_mask)
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    action = jax.jit(jax.vmap(lambda k: random_split_action(env, k, obs)))(keys)
    counts = np.bincount(np.asarray(action.boundary), minlength=7)
    assert (counts[~np.asarray(boundary_mask)] == 0).all()
    assert np.allclose(counts[np.asarray(boundary_mask)] / 20000, 0.25, atol=0.02)
    assert not (np.asarray(action.units, bool) & ~np.asarray(unit_mask)[np.asarray(action.boundary)]).any()
    assert set(np.unique(np.asarray(action.fmt))) == {0, 1, 2}
    np.testing.assert_array_equal(np.asarray(jax.vmap(lambda k: bits(k, 5))(keys[:64])),
                                  np.asarray(jax.vmap(lambda k: jax.random.bits(k, (5,), jnp.uint32))(keys[:64])))
