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


def test_readme_and_docs_link_only_inside_the_repository():
    # a user who clones the repository has no ../shared and no session paths: every relative link resolves
    bad = []
    for md in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        text = md.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|#|mailto:", target):
                continue
            if not (md.parent / target.split("#")[0]).resolve().exists():
                bad.append(f"{md.relative_to(REPO)} -> {target}")
        bad += [f"{md.relative_to(REPO)} mentions ../shared" for _ in re.findall(r"\.\./shared", text)]
    assert not bad, bad


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci/run").read_text()
    assert "bash scripts/test" in ci
    test_script = (REPO / "scripts/test").read_text()
    assert "scripts/setup" in test_script and "pytest" in test_script and '"$status" -eq 5' in test_script


def test_bare_splitrl_lists_every_command():
    from splitrl.cli import COMMANDS
    out = subprocess.run([sys.executable, "-c", "from splitrl.cli import main; main()"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name, (module, what) in COMMANDS.items():
        assert name in out.stdout and what in out.stdout
        assert hasattr(__import__(module, fromlist=["main"]), "main"), module


def test_profiles_show_prints_the_default_scenario_profile():
    out = subprocess.run([sys.executable, "-c", "from splitrl.cli import profiles; profiles()", "show", "--scenario",
                          "default"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SmolLM2-135M-Instruct" in out.stdout and "Memory fit" in out.stdout


def test_profiles_show_rejects_a_bad_format_clearly():
    out = subprocess.run([sys.executable, "-c", "from splitrl.cli import profiles; profiles()", "show", "smollm2-135m",
                          "this-host", "--weight-format", "fp8"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--weight-format" in out.stderr and "fp8" in out.stderr
