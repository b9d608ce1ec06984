"""The Hydra app: tiny-budget runs on gymnax CartPole (the learner does not care which env), resume
bit-exactness, checkpoint errors, W&B offline, multirun."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from splitrl.config import ConfigError
from splitrl.training.checkpoint import CheckpointError
from splitrl.training.train import CONF_DIR, chunk_rows, run

from .conftest import REPO

TINY = ["agent.num_envs=4", "agent.num_steps=16", "agent.total_timesteps=512",
        "agent.num_minibatches=2", "agent.update_epochs=2", "updates_per_chunk=2", "checkpoint_every=2",
        "progress=false", "logger=disabled", "eval_episodes_envs=4"]


def train(run_dir: Path, *overrides: str, agent: str = "ppo_cartpole") -> dict:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"agent={agent}", *TINY, *overrides])
    return run(cfg, run_dir)


def test_hppo_trains_on_the_default_scenario_with_v_from_the_config(tmp_path):
    # one member: XLA compiles the split env under a second (member) vmap axis very slowly (see docs/training.md)
    summary = train(tmp_path, "reward_v_grid=[10.0]", "reward_v_field=reward.V", "checkpoint_every=0",
                    "eval_episodes_envs=0", agent="hppo")
    assert summary["updates"] == 8 and [m["reward_v"] for m in summary["members"]] == [10.0]
    assert all(math.isfinite(p["episode_return"]) for p in summary["curve"] if p["episode_return"] == p["episode_return"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("env/latency", "env/energy", "env/delta_ppl", "env/backlog", "train/episode_return"):
        assert key in rows[-1], key


def test_tiny_run_writes_config_metrics_checkpoints_and_final_params(tmp_path):
    summary = train(tmp_path, "num_seeds=2", "lr_grid=[1e-4,3e-4]")
    assert len(summary["members"]) == 4 and summary["updates"] == 8
    for name in ("resolved_config.yaml", "metrics.jsonl", "summary.json", "final_params.msgpack"):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "final_params").is_dir()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["6", "8"]   # keep_checkpoints = 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 4                      # 4 chunks × 4 members
    assert {r["lr"] for r in rows} == {1e-4, 3e-4} and {r["seed"] for r in rows} == {0, 1}
    for key in ("train/approx_kl", "train/clip_fraction", "train/explained_variance", "train/steps_per_s",
                "train/entropy", "train/value_loss", "train/policy_loss", "train/env_steps"):
        assert key in rows[-1], key


def test_resume_is_bit_exact(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(whole)
    first = train(parts, "stop_after=4")
    assert first["stopped_early"] and not (parts / "final_params.msgpack").exists()
    second = train(parts, "resume=true")
    assert second["updates"] == 8
    assert (whole / "final_params.msgpack").read_bytes() == (parts / "final_params.msgpack").read_bytes()
    # the resumed run logged only the updates after the checkpoint
    updates = [json.loads(line)["update"] for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert updates == [2, 4, 6, 8]


def test_resume_refuses_a_mismatched_or_corrupt_checkpoint(tmp_path):
    train(tmp_path, "stop_after=2")
    with pytest.raises(CheckpointError, match=r"agent\.lr = 0\.00025 in the checkpoint but 0\.001 now"):
        train(tmp_path, "resume=true", "agent.lr=1e-3")
    for path in (tmp_path / "checkpoints" / "2").rglob("*"):
        if path.is_file():
            path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        train(tmp_path, "resume=true")


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_every = 3"):
        train(tmp_path, "checkpoint_every=3")
    with pytest.raises(ConfigError, match="num_minibatches = 3"):
        train(tmp_path, "agent.num_minibatches=3")


def test_wandb_offline_writes_one_grouped_run_per_seed_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")   # a network attempt would fail, not hang
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    train(tmp_path, "logger=offline", "num_seeds=2")
    runs = sorted((tmp_path / "wandb_root" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    assert all(any(r.glob("*.wandb")) for r in runs)
    assert not (tmp_path / "elsewhere").exists()


def test_multirun_writes_two_run_dirs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "splitrl.training.train", "--multirun", "agent=ppo_cartpole", *TINY, "seed=0,1",
                          f"hydra.sweep.dir={tmp_path}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and (p / "summary.json").exists())
    assert len(dirs) == 2, list(tmp_path.iterdir())
    assert {json.loads((d / "summary.json").read_text())["members"][0]["seed"] for d in dirs} == {0, 1}


def test_chunk_rows_report_the_guides_fit_only_while_the_guide_is_on():
    metrics = {"episodes": np.ones((2, 3)), "episode_return_sum": np.ones((2, 3)), "guide_beta": np.array(
        [[0.5, 0.25, 0.0], [0.0, 0.0, 0.0]]), "guide_nll": np.array([[2.0, 4.0, 0.0], [0.0, 0.0, 0.0]]),
        "guide_agree": np.array([[0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])}
    guided, unguided = chunk_rows(metrics, 1.0)
    assert guided["train/guide_nll"] == 3.0 and guided["train/guide_agree"] == 0.75
    assert guided["train/guide_beta"] == 0.25
    assert "train/guide_nll" not in unguided and "train/guide_agree" not in unguided
