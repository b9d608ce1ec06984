"""A `splitrl-train` run directory, written and read in one place.

    resolved_config.yaml   the whole resolved Hydra config (agent, scenario, training, logger)
    final_params.msgpack   {"format_version": PARAMS_FORMAT, "params": the member batch's parameters,
                           every leaf with a leading member axis}
    final_params/          the same parameters as an orbax checkpoint
    summary.json           learning curve, members, greedy and random-policy evaluation
    metrics.jsonl, checkpoints/<update>/, wandb_root/   (splitrl.training.logger, .checkpoint)

Readers (`splitrl-eval`'s trained policies, `splitrl-export`, the bench) go through `RunDir.read`, which
types the config and checks the format version, so an old or foreign directory gets one clear error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from splitrl.agents.config import PPOConfig

PARAMS_FORMAT = 2      # 1: a bare msgpack of the parameters (splitrl 0.1, before this module)
CONFIG_FILE, PARAMS_FILE, SUMMARY_FILE = "resolved_config.yaml", "final_params.msgpack", "summary.json"


# agent fields added after runs were written, with the value every older run trained with
AGENT_ADDED = {"team_spirit": 0.0, "guide_congestion": 0.0, "pretrain_rounds": 0, "pretrain_states": 16384,
               "pretrain_steps": 2000, "pretrain_lr": 1.0e-3}


class RunDirError(ValueError):
    pass


def write_final_params(run_dir: Path, params) -> None:
    """The member batch's parameters, as an orbax checkpoint and as the versioned msgpack readers use."""
    import jax
    import orbax.checkpoint as ocp
    from flax import serialization
    with ocp.StandardCheckpointer() as saver:
        saver.save((Path(run_dir) / "final_params").resolve(), params, force=True)
    blob = {"format_version": PARAMS_FORMAT, "params": jax.device_get(params)}
    (Path(run_dir) / PARAMS_FILE).write_bytes(serialization.msgpack_serialize(serialization.to_state_dict(blob)))


@dataclasses.dataclass(frozen=True)
class RunDir:
    path: Path
    config: dict              # the resolved config, as written
    agent: PPOConfig

    @classmethod
    def read(cls, path: str | Path) -> RunDir:
        path = Path(path)
        if path.is_file():
            path = path.parent
        cfg_path = path / CONFIG_FILE
        if not cfg_path.is_file():
            raise RunDirError(f"{path}: no {CONFIG_FILE}; give the directory of a splitrl-train run")
        config = yaml.safe_load(cfg_path.read_text())
        if not isinstance(config, dict) or not isinstance(config.get("agent"), dict):
            raise RunDirError(f"{cfg_path}: has no agent section; not a splitrl-train run")
        try:
            agent = PPOConfig.from_dict(AGENT_ADDED | config["agent"], f"agent ({cfg_path})")
        except ValueError as e:
            raise RunDirError(f"{cfg_path}: {e}; was it written by another splitrl version?") from e
        return cls(path=path, config=config, agent=agent)

    @property
    def scenario(self) -> dict | None:
        return self.config.get("scenario")

    @property
    def scenario_id(self) -> str | None:
        return (self.scenario or {}).get("id")

    @property
    def fleet_id(self) -> str | None:
        """The fleet a run trained on (`splitrl-train fleet=...`), else None."""
        return (self.config.get("fleet") or {}).get("id")

    def summary(self) -> dict[str, Any]:
        p = self.path / SUMMARY_FILE
        return json.loads(p.read_text()) if p.is_file() else {}

    def member_batch(self):
        """Every member's parameters (leading member axis), after checking the format version."""
        from flax import serialization
        p = self.path / PARAMS_FILE
        if not p.is_file():
            raise RunDirError(f"{p}: missing; the run did not finish (summary.json says how far it got)")
        try:
            blob = serialization.msgpack_restore(p.read_bytes())
        except Exception as e:  # noqa: BLE001 - msgpack raises several types for foreign bytes
            raise RunDirError(f"{p}: not a parameter file ({type(e).__name__}: {e})") from e
        version = blob.get("format_version") if isinstance(blob, dict) else None
        if version != PARAMS_FORMAT:
            raise RunDirError(f"{p}: format_version = {version!r}, this splitrl reads {PARAMS_FORMAT} (format 1 runs "
                              f"are from splitrl 0.1); retrain with this splitrl, or use the one that wrote it")
        return blob["params"]

    def params(self, member: int | None = None) -> tuple[Any, int]:
        """(one member's parameters, its index); member None: the best greedy return in summary.json."""
        batch = self.member_batch()
        n = int(np.shape(next(_leaves(batch)))[0])
        if member is None:
            returns = self.summary().get("greedy_return")
            member = int(np.nanargmax(returns)) if returns and len(returns) == n else 0
        if not 0 <= member < n:
            raise RunDirError(f"{self.path}: member {member} is out of range: the run trained {n} policies")
        return _map(batch, lambda x: np.asarray(x)[member]), member


def _leaves(d):
    if isinstance(d, dict):
        for v in d.values():
            yield from _leaves(v)
    else:
        yield d


def _map(d, fn):
    return {k: _map(v, fn) for k, v in d.items()} if isinstance(d, dict) else fn(d)
