"""Orbax checkpoints of the whole (vmapped) learner state, with a format version and the resolved
config that identifies the run; restoring checks both and names the first field that differs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: d}


def first_difference(saved: dict, current: dict) -> str | None:
    a, b = _flatten(saved), _flatten(current)
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            return f"{key} = {a.get(key, '<absent>')!r} in the checkpoint but {b.get(key, '<absent>')!r} now"
    return None


class Checkpointer:
    """Synchronous orbax CheckpointManager under `<run_dir>/checkpoints` (synchronous so that a
    resumed run sees exactly what was written)."""

    def __init__(self, directory: Path, keep: int):
        import orbax.checkpoint as ocp
        self.ocp = ocp
        self.directory = Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                                                 create=True))

    def save(self, update: int, state, identity: dict[str, Any]) -> None:
        meta = {"format_version": FORMAT_VERSION, "update": update, "identity": identity}
        self.manager.save(update, args=self.ocp.args.Composite(
            state=self.ocp.args.StandardSave(state), meta=self.ocp.args.JsonSave(meta)), force=True)
        self.manager.wait_until_finished()

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, target_state, identity: dict[str, Any]):
        """(state, update) from the latest checkpoint, checked against `identity` and the shapes of
        `target_state`. Raises CheckpointError with the reason and the fix."""
        step = self.latest()
        where = self.directory / str(step)
        if step is None:
            raise CheckpointError(f"resume=true but {self.directory} holds no checkpoint; run without resume")
        try:
            meta = self.manager.restore(step, args=self.ocp.args.Composite(meta=self.ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable files
            raise CheckpointError(f"checkpoint {where} is unreadable ({type(e).__name__}: {e}); "
                                  "delete it or start a new run dir (resume=false)") from e
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else meta
            raise CheckpointError(f"checkpoint {where}: format_version = {got!r}, this splitrl reads "
                                  f"{FORMAT_VERSION}; retrain, or resume with the splitrl that wrote it")
        diff = first_difference(json.loads(json.dumps(meta["identity"])), json.loads(json.dumps(identity)))
        if diff:
            raise CheckpointError(f"checkpoint {where} does not match this run: {diff}; resume with the same "
                                  "config or start a new run dir (resume=false)")
        try:
            restored = self.manager.restore(step, args=self.ocp.args.Composite(
                state=self.ocp.args.StandardRestore(target_state)))["state"]
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {where}: the saved learner state does not load into this run's "
                                  f"({type(e).__name__}: {e}); delete it or start a new run dir") from e
        for path, (a, b) in _zip_leaves(restored, target_state):
            if np.shape(a) != np.shape(b) or np.asarray(a).dtype != np.asarray(b).dtype:
                raise CheckpointError(f"checkpoint {where}: {path} has shape {np.shape(a)} {np.asarray(a).dtype}, "
                                      f"this run expects {np.shape(b)} {np.asarray(b).dtype}")
        return restored, int(meta["update"])

    def close(self) -> None:
        self.manager.close()


def _zip_leaves(a, b):
    la, _ = jax.tree_util.tree_flatten_with_path(a)
    lb = jax.tree.leaves(b)
    if len(la) != len(lb):
        raise CheckpointError(f"checkpoint holds {len(la)} arrays, this run expects {len(lb)}")
    return [(jax.tree_util.keystr(p), (x, y)) for (p, x), y in zip(la, lb, strict=True)]
