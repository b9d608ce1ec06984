import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
# One persistent XLA compilation cache for the session (inherited by subprocesses): the training
# tests compile the same tiny programs many times, once per run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:   # made once, by the first process (workers inherit it)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="splitrl-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Timing-sensitive files (real sockets, deadlines, latency bounds against a baseline): scripts/test runs
# them alone, after the parallel part, so that another worker's compiles cannot push them past a bound.
SERIAL_FILES = {"test_harness_probes.py", "test_harness_faults.py", "test_harness_server.py",
                "test_harness_protocol.py", "test_harness_split.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)


REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "splitrl" / "profiles_data"
CONF = REPO / "splitrl" / "conf"


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    """A private copy of profiles_data (models and devices, a few tables) that a test may break."""
    root = tmp_path / "profiles_data"
    shutil.copytree(DATA / "models", root / "models")
    shutil.copytree(DATA / "devices", root / "devices")
    (root / "costs" / "analytic").mkdir(parents=True)
    for name in ("smollm2-135m__this-host__fp32.json", "smollm2-135m__a100-80gb__fp16.json"):
        shutil.copy(DATA / "costs" / "analytic" / name, root / "costs" / "analytic" / name)
    return root


def synthetic_ppl(n_layers: int = 30) -> dict:
    """A PPL table with known values (a test fixture, not a measurement): damage shrinks with depth."""
    b = [0, 1, 4, 8, 12, 16, 20, 24, 28, 30]
    return {"schema": "splitrl.ppl/v1", "model": "smollm2-135m", "baseline_ppl": 15.0, "sweeps": {
        "format": {"axes": {"boundary": b, "format": ["fp16", "int8", "int4"]},
                   "mean": [[0.0, 0.05 + 0.1 * (1 - x / 30), 0.5 + 2 * (1 - x / 30)] for x in b],
                   "std": [[0.0, 0.01, 0.1]] * len(b)},
        "loss": {"axes": {"boundary": b, "loss": [0.0, 0.01, 0.05, 0.1, 0.3]}, "fixed": {"format": "fp16"},
                 "mean": [[0, 0.3, 1.5, 3, 10]] * len(b), "std": [[0, 0.1, 0.2, 0.3, 1]] * len(b)},
        "snr_db": {"axes": {"boundary": b, "snr_db": [0, 10, 20, 30]}, "fixed": {"format": "fp16"},
                   "mean": [[20, 5, 1, 0.1]] * len(b), "std": [[1, 1, 0.1, 0.01]] * len(b)}},
        "provenance": {"kind": "synthetic", "note": "test fixture"}}


@pytest.fixture(scope="module")
def env_data(tmp_path_factory):
    """profiles_data with a synthetic PPL table of known values, as SPLITRL_PROFILES_DATA for one test
    module (restored after it, so other modules see the shipped tables)."""
    import json
    root = tmp_path_factory.mktemp("env") / "profiles_data"
    shutil.copytree(DATA, root)
    (root / "ppl").mkdir(exist_ok=True)
    (root / "ppl" / "smollm2-135m.json").write_text(json.dumps(synthetic_ppl()))
    old = os.environ.get("SPLITRL_PROFILES_DATA")
    os.environ["SPLITRL_PROFILES_DATA"] = str(root)
    yield root
    if old is None:
        os.environ.pop("SPLITRL_PROFILES_DATA", None)
    else:
        os.environ["SPLITRL_PROFILES_DATA"] = old
