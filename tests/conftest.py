import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
# One persistent XLA compilation cache for the session (inherited by subprocesses): the training
# tests compile the same tiny programs many times, once per run.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="splitrl-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "profiles_data"


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
