"""The installable wheel: built from the tracked files, installed non-editable into a fresh venv (the
dependencies come from the project's venv), and used from a directory outside the checkout: the
configs and shipped profiles travel inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from .conftest import CONF, REPO

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, timeout=600):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin dir, a work dir outside the checkout, env vars) with the wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"   # tracked files only: a stale build/ of the checkout cannot leak into the wheel
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPLITRL_PROFILES_DATA")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
          str(src)], tmp, env)
    wheel = next((tmp / "dist").glob("splitrl-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp, env)
    # the dependencies: the project venv's site-packages, after the fresh venv's own (a plain path:
    # its .pth files, the editable install of the checkout among them, are not run)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp / "elsewhere"
    work.mkdir()
    return venv / "bin", work, env, wheel


def test_the_wheel_carries_configs_and_profiles(installed):
    *_, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    for want in ("splitrl/conf/train.yaml", "splitrl/conf/eval.yaml", "splitrl/conf/scenario/default.yaml",
                 "splitrl/profiles_data/models/smollm2-135m.yaml", "splitrl/profiles_data/ppl/smollm2-135m.json",
                 "splitrl/profiles_data/traces/4g_nyc_bus_b57.tsv", "hydra_plugins/splitrl_ray_launcher/__init__.py"):
        assert want in names, want
    assert not any(n.startswith(("tests/", "docs/")) for n in names)


def test_installed_package_validates_trains_and_evaluates_outside_the_checkout(installed):
    bin_dir, work, env, _ = installed
    where = _run([str(bin_dir / "python"), "-c", "import splitrl, splitrl.resources as r; "
                  "print(splitrl.__file__); print(r.config_dir())"], work, env)
    assert str(REPO) not in where and "site-packages" in where, where
    assert "valid, 0 invalid" in _run([str(bin_dir / "splitrl-profiles"), "validate"], work, env)
    scenario = yaml.safe_load((CONF / "scenario" / "default.yaml").read_text()) | {"id": "mine-v1", "episode_slots": 20}
    (work / "mine.yaml").write_text(yaml.safe_dump(scenario))
    _run([str(bin_dir / "splitrl-train"), "scenario=mine.yaml", "agent.num_envs=8", "agent.num_steps=16",
          "agent.total_timesteps=256", "agent.num_minibatches=2", "updates_per_chunk=2", "checkpoint_every=0",
          "eval_episodes_envs=0", "logger=disabled", "progress=false", "hydra.run.dir=run"], work, env)
    assert yaml.safe_load((work / "run" / "resolved_config.yaml").read_text())["scenario"]["id"] == "mine-v1"
    _run([str(bin_dir / "splitrl-eval"), "policies=[cloud_only,myopic_dpp]", "runs=[run]", "scenarios=[mine.yaml]",
          "seeds=1", "episodes=1", "steps=10", "plot_policies=[]", "hydra.run.dir=eval"], work, env)
    table = (work / "eval" / "results.md").read_text()
    assert "| cloud_only |" in table and "| myopic_dpp |" in table and "| hppo |" in table
