"""Run directories (splitrl/training/rundir.py): one reader for eval, export and the bench, with a
format version that turns an old or foreign directory into one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from flax import serialization

from splitrl.training.rundir import PARAMS_FORMAT, RunDir, RunDirError, write_final_params

from .conftest import CONF


def _run(tmp_path, members=3, greedy=None):
    agent = yaml.safe_load((CONF / "agent" / "hppo.yaml").read_text())
    (tmp_path / "resolved_config.yaml").write_text(yaml.safe_dump({"agent": agent, "scenario": {"id": "s-v1"}}))
    params = {"params": {"w": np.arange(members * 2, dtype=np.float32).reshape(members, 2)}}
    write_final_params(tmp_path, params)
    if greedy is not None:
        (tmp_path / "summary.json").write_text(f'{{"greedy_return": {greedy}}}')
    return tmp_path


def test_reads_config_params_and_the_best_member(tmp_path):
    run = RunDir.read(_run(tmp_path, greedy=[-3.0, -1.0, -2.0]))
    assert run.agent.policy == "hierarchical" and run.scenario_id == "s-v1"
    params, member = run.params()
    assert member == 1 and params["params"]["w"].tolist() == [2.0, 3.0]
    assert run.params(2)[0]["params"]["w"].tolist() == [4.0, 5.0]
    assert RunDir.read(tmp_path / "final_params.msgpack").path == tmp_path   # a file inside the dir works too


def test_old_foreign_and_incomplete_run_dirs_get_one_clear_error(tmp_path):
    with pytest.raises(RunDirError, match="no resolved_config.yaml"):
        RunDir.read(tmp_path)
    run = _run(tmp_path)
    with pytest.raises(RunDirError, match="out of range: the run trained 3"):
        RunDir.read(run).params(3)
    old = serialization.to_bytes({"params": {"w": np.zeros((3, 2), np.float32)}})   # splitrl 0.1's bare msgpack
    (run / "final_params.msgpack").write_bytes(old)
    with pytest.raises(RunDirError, match=f"format_version = None, this splitrl reads {PARAMS_FORMAT}.*retrain"):
        RunDir.read(run).params()
    (run / "final_params.msgpack").write_bytes(b"\x00not msgpack")
    with pytest.raises(RunDirError, match="final_params.msgpack"):
        RunDir.read(run).params()
    (run / "final_params.msgpack").unlink()
    with pytest.raises(RunDirError, match="did not finish"):
        RunDir.read(run).params()
    (run / "resolved_config.yaml").write_text(yaml.safe_dump({"agent": {"name": "x"}}))
    with pytest.raises(RunDirError, match="missing key"):
        RunDir.read(run)


def test_a_run_written_before_team_spirit_reads_as_the_own_reward_it_trained_with(tmp_path):
    run = _run(tmp_path)
    config = yaml.safe_load((run / "resolved_config.yaml").read_text())
    del config["agent"]["team_spirit"]
    (run / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    assert RunDir.read(run).agent.team_spirit == 0.0
