"""Where splitrl finds its Hydra configs and its shipped data: inside the installed package
(`importlib.resources`), so a wheel works from any directory. Users add their own on top:
Hydra's `--config-dir DIR` for configs (a `scenario/my.yaml` there is `scenario=my`), and the
`SPLITRL_PROFILES_DATA` environment variable for a profiles directory (models, devices, cost and
PPL tables, traces) that replaces the shipped one."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

DATA_ENV = "SPLITRL_PROFILES_DATA"


def _package_path(name: str) -> Path:
    return Path(str(resources.files("splitrl") / name))


def config_dir() -> Path:
    """The shipped Hydra config tree (train.yaml, eval.yaml and the agent/scenario/logger groups)."""
    return _package_path("conf")


def data_dir() -> Path:
    """The profiles directory: $SPLITRL_PROFILES_DATA when set, else the shipped `splitrl/profiles_data`."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else _package_path("profiles_data")
