"""Where profile files live and how to load them by name.

Layout of a profiles directory (default: the shipped `splitrl/profiles_data/`; override with the
`SPLITRL_PROFILES_DATA` environment variable or a `root=` argument):
    models/<model>.yaml                               architecture (ModelArch)
    devices/<device>.yaml                             datasheet or host facts (Device)
    costs/<kind>/<model>__<device>__<wformat>.json    cost tables, kind = measured | analytic
    ppl/<model>.json                                  PPL-degradation table
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from splitrl.profiles.errors import ProfileError
from splitrl.profiles.reader import read_document
from splitrl.profiles.schema import PROVENANCE_KINDS, Device, ModelArch
from splitrl.profiles.table_schema import CostTable, PPLTable
from splitrl.resources import DATA_ENV, data_dir


def data_root(root: Path | str | None = None) -> Path:
    """`root`, else $SPLITRL_PROFILES_DATA, else the shipped profiles (splitrl.resources.data_dir)."""
    path = Path(root) if root is not None else data_dir()
    if not path.is_dir():
        raise ProfileError(path, "<dir>", None, "profiles directory not found",
                           f"point {DATA_ENV} (or --out / root=) at a directory with models/ and devices/")
    return path


def _names(root: Path, sub: str, suffix: str) -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in (root / sub).glob(f"*{suffix}"))


def list_models(root=None) -> list[str]:
    return _names(data_root(root), "models", ".yaml")


def list_devices(root=None) -> list[str]:
    return _names(data_root(root), "devices", ".yaml")


def _by_name(root: Path, sub: str, name: str, kinds: list[str]) -> Path:
    path = root / sub / f"{name}.yaml"
    if not path.is_file():
        raise ProfileError(root / sub, sub[:-1], name, f"unknown {sub[:-1]}; known: {kinds}",
                           f"pick one of those or add {sub}/{name}.yaml")
    return path


@functools.lru_cache(maxsize=64)
def _load_model(path: str) -> ModelArch:
    return ModelArch.from_dict(read_document(Path(path)), path)


@functools.lru_cache(maxsize=64)
def _load_device(path: str) -> Device:
    return Device.from_dict(read_document(Path(path)), path)


def load_model(name_or_path: str, root=None) -> ModelArch:
    """A model by name (models/<name>.yaml) or by path to a YAML file."""
    if name_or_path.endswith((".yaml", ".yml")):
        return _load_model(str(Path(name_or_path)))
    r = data_root(root)
    return _load_model(str(_by_name(r, "models", name_or_path, list_models(r))))


def load_device(name_or_path: str, root=None) -> Device:
    if name_or_path.endswith((".yaml", ".yml")):
        return _load_device(str(Path(name_or_path)))
    r = data_root(root)
    return _load_device(str(_by_name(r, "devices", name_or_path, list_devices(r))))


def costs_path(model: str, device: str, weight_format: str, kind: str, root=None) -> Path:
    return data_root(root) / "costs" / kind / f"{model}__{device}__{weight_format}.json"


def load_costs_file(path: Path | str, model: ModelArch) -> CostTable:
    return CostTable.from_dict(read_document(Path(path)), model, path)


def load_costs(model: ModelArch, device: str, weight_format: str, kind: str = "best", root=None) -> CostTable:
    """The shipped cost table of (model, device, weight format).

    kind: "measured", "analytic", or "best" (measured when one exists, else analytic; the table's
    provenance says which was used). A missing table is an error with the command that makes it.
    """
    kinds = list(PROVENANCE_KINDS) if kind == "best" else [kind]
    if kind != "best" and kind not in PROVENANCE_KINDS:
        raise ValueError(f"cost table kind {kind!r} is unknown; choose one of {['best', *PROVENANCE_KINDS]}")
    for k in sorted(kinds, key=lambda k: k != "measured"):
        path = costs_path(model.name, device, weight_format, k, root)
        if path.is_file():
            table = load_costs_file(path, model)
            if table.device != device or table.weight_format != weight_format:
                raise ProfileError(path, "device/weight_format", (table.device, table.weight_format),
                                   f"must match the file name ({device}, {weight_format})")
            return table
    raise ProfileError(costs_path(model.name, device, weight_format, kinds[-1], root), "<file>", None,
                       f"no {'measured or analytic' if kind == 'best' else kind} cost table for model {model.name} on device {device} in {weight_format}",
                       f"run `splitrl-profiles build {model.name} {device} --weight-format {weight_format}`")


def load_ppl(model: ModelArch, root=None, path: Path | str | None = None) -> PPLTable:
    path = Path(path) if path is not None else data_root(root) / "ppl" / f"{model.name}.json"
    if not path.is_file():
        raise ProfileError(path, "<file>", None, f"no PPL-degradation table for model {model.name}",
                           "run `splitrl-profiles measure ppl --model ...` to measure one (see docs/profiles.md)")
    return PPLTable.from_dict(read_document(path), model, path)


def write_json(path: Path | str, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    # One top-level key per line, each value compact: small files, readable diffs of the header.
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in data.items())
    tmp.write_text("{\n" + body + "\n}\n")
    tmp.replace(path)  # atomic: a crash never leaves a half-written table
    return path
