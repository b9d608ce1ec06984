"""Typed, checked access to one parsed profile file.

Every getter names the file and the dotted field in its error, rejects NaN/inf and out-of-range
values, and unknown keys are errors too (a typo must not become a silent default).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import yaml

from splitrl.profiles.errors import ProfileError

_MISSING = object()


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats: PyYAML (YAML 1.1) reads `1.5e9` (no exponent sign) as a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def read_document(path: Path) -> dict:
    """Parse a YAML or JSON profile file into a dict, with a clear error for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(path, "<file>", None, "file does not exist", "check the path or the name")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_Loader)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProfileError(path, "<file>", None, f"not valid {path.suffix[1:].upper()} ({exc})") from exc
    if not isinstance(data, dict):
        raise ProfileError(path, "<file>", type(data).__name__, "must hold a mapping at top level")
    return data


class Reader:
    """Checked view of a mapping read from `file`; `prefix` is the dotted path of this mapping."""

    def __init__(self, file: Path | str, data: Mapping, prefix: str = ""):
        self.file, self.data, self.prefix = file, data, prefix
        self._seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, value: object, expected: str, fix: str = "fix the file") -> ProfileError:
        return ProfileError(self.file, self.name(key), value, expected, fix)

    def raw(self, key: str, default: object = _MISSING) -> object:
        self._seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.fail(key, None, "missing required field", "add it")
            return default
        return self.data[key]

    def str(self, key: str, choices: Iterable[str] | None = None, default: object = _MISSING) -> str:
        value = self.raw(key, default)
        if not isinstance(value, str) or not value:
            raise self.fail(key, value, "must be a non-empty string")
        if choices is not None and value not in tuple(choices):
            raise self.fail(key, value, f"must be one of {sorted(choices)}")
        return value

    def bool(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise self.fail(key, value, "must be true or false")
        return value

    def int(self, key: str, lo: int | None = None, hi: int | None = None) -> int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, value, "must be an integer")
        self._range(key, value, lo, hi)
        return value

    def float(self, key: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
              default: object = _MISSING) -> float:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, value, "must be a number")
        value = float(value)
        if not math.isfinite(value):
            raise self.fail(key, value, "must be a finite number (no NaN or inf)")
        if lo_open and lo is not None and value <= lo:
            raise self.fail(key, value, f"must be > {lo}")
        self._range(key, value, lo if not lo_open else None, hi)
        return value

    def _range(self, key: str, value: float, lo: float | None, hi: float | None) -> None:
        if lo is not None and value < lo:
            raise self.fail(key, value, f"must be >= {lo}")
        if hi is not None and value > hi:
            raise self.fail(key, value, f"must be <= {hi}")

    def sub(self, key: str, default: object = _MISSING) -> Reader:
        value = self.raw(key, default)
        if not isinstance(value, Mapping):
            raise self.fail(key, value, "must be a mapping")
        return Reader(self.file, value, f"{self.name(key)}.")

    def array(self, key: str, shape: tuple[int, ...], what: tuple[str, ...], lo: float | None = 0.0,
              dtype=np.float64) -> np.ndarray:
        """A numeric array of exactly `shape`; `what` names each axis for the error message."""
        value = self.raw(key)
        try:
            arr = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError):
            raise self.fail(key, _preview(value), f"must be a numeric array of shape {_shape_str(shape, what)} "
                            "(ragged or non-numeric rows found)") from None
        if arr.shape != tuple(shape):
            raise self.fail(key, f"array of shape {arr.shape}",
                            f"expected shape {_shape_str(shape, what)}", "regenerate or fix the table")
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise self.fail(key, f"{arr[idx]} at {_index_str(idx, what)}", "must be finite (no NaN or inf)",
                            "re-run the profiler for that entry")
        if lo is not None and (arr < lo).any():
            idx = tuple(int(i) for i in np.argwhere(arr < lo)[0])
            raise self.fail(key, f"{arr[idx]} at {_index_str(idx, what)}", f"must be >= {lo}",
                            "re-run the profiler for that entry")
        return arr

    def str_list(self, key: str, length: int | None = None) -> list[str]:
        value = self.raw(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, _preview(value), "must be a list of strings")
        if length is not None and len(value) != length:
            raise self.fail(key, f"{len(value)} entries", f"expected {length} entries")
        return value

    def done(self, allowed_extra: Iterable[str] = ()) -> None:
        """Reject keys nobody read: a misspelt field must not be silently ignored."""
        unknown = set(self.data) - self._seen - set(allowed_extra)
        if unknown:
            key = sorted(unknown)[0]
            raise self.fail(key, self.data[key], f"unknown field (known: {sorted(self._seen)})",
                            "remove it or fix its spelling")


def _preview(value: object) -> object:
    return value if len(repr(value)) < 80 else repr(value)[:77] + "..."


def _shape_str(shape: tuple[int, ...], what: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"{n} {w}" for n, w in zip(shape, what, strict=True)) + "]"


def _index_str(idx: tuple[int, ...], what: tuple[str, ...]) -> str:
    return ", ".join(f"{w} {i}" for i, w in zip(idx, what, strict=True))
