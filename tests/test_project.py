"""The project's promises to a new user: README commands, CI, the main job."""

import re
import subprocess
import sys

from .conftest import REPO


def readme_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README must open with a code block holding the two commands"
    assert text.index(block.group(0)) < text.index("\n## "), "the commands come before any section"
    lines = [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.split("#")[0].strip()]
    return lines


def test_readme_opens_with_exactly_two_commands_that_exist():
    cmds = readme_commands()
    assert cmds == ["bash scripts/run", "bash scripts/test"], cmds
    for c in cmds:
        assert (REPO / c.split()[1]).is_file()


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci/run").read_text()
    assert "bash scripts/test" in ci
    test_script = (REPO / "scripts/test").read_text()
    assert "scripts/setup" in test_script and "pytest" in test_script and '"$status" -eq 5' in test_script


def test_main_job_prints_the_default_profile(tmp_path):
    out = subprocess.run([sys.executable, "-m", "splitrl.main", f"hydra.run.dir={tmp_path}"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SmolLM2-135M-Instruct" in out.stdout and "Memory fit" in out.stdout


def test_main_job_rejects_a_bad_config_clearly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "splitrl.main", f"hydra.run.dir={tmp_path}",
                          "profile.edge_weight_format=fp8"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "profile.edge_weight_format" in out.stderr and "fp8" in out.stderr
