"""Typed, frozen views of the Hydra config: converted once at the entry point, so nothing below
the entry point sees a DictConfig and a misspelt key is an error, not a silent default."""

from __future__ import annotations

import dataclasses
from typing import Any

from splitrl.profiles.formats import WEIGHT_FORMATS


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


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    model: str
    edge: str
    cloud: str | None
    edge_weight_format: str
    cloud_weight_format: str
    context: int
    table_kind: str

    def check(self, where: str) -> None:
        for key in ("edge_weight_format", "cloud_weight_format"):
            if getattr(self, key) not in WEIGHT_FORMATS:
                raise ConfigError(f"config {where}.{key} = {getattr(self, key)!r}: must be one of {WEIGHT_FORMATS}")
        if not isinstance(self.context, int) or self.context < 1:
            raise ConfigError(f"config {where}.context = {self.context!r}: must be a positive integer")
        if self.table_kind not in ("best", "measured", "analytic"):
            raise ConfigError(f"config {where}.table_kind = {self.table_kind!r}: must be best, measured or analytic")
