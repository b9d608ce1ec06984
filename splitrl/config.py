"""Typed, frozen views of the Hydra config: converted once at the entry point, so nothing below
the entry point sees a DictConfig and a misspelt key is an error, not a silent default."""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    pass


def build(cls, data: dict[str, Any], where: str):
    """Instantiate dataclass `cls` from a plain dict, naming the config group on any mismatch."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = set(data) - names, names - set(data)
    if unknown:
        raise ConfigError(f"config {where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    if missing:
        raise ConfigError(f"config {where}: missing key(s) {sorted(missing)}")
    obj = cls(**data)
    if hasattr(obj, "check"):
        obj.check(where)
    return obj
