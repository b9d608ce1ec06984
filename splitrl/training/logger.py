"""Host-side metric fan-out: JSONL in the run dir, one W&B run per trained policy (grouped), a console
line. Called between jitted chunks only. wandb is imported lazily, and only when mode != disabled."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from splitrl.training.config import LoggerConfig


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class RunLogger:
    """`log(update, rows)` with one row (a flat dict of floats) per member of the vmapped batch."""

    def __init__(self, run_dir: Path, cfg: LoggerConfig, run_name: str, members: list[dict[str, Any]],
                 config: dict[str, Any], resume: bool = False):
        self.cfg, self.members = cfg, members
        self.run_dir = Path(run_dir)
        self.jsonl = (self.run_dir / "metrics.jsonl").open("a" if resume else "w") if cfg.jsonl else None
        self.wandb_runs = []
        if cfg.mode != "disabled":
            self.wandb_runs = self._start_wandb(run_name, config, resume)

    def _start_wandb(self, run_name, config, resume):
        try:
            import wandb
        except ImportError as e:   # pragma: no cover - wandb is a core dependency
            raise RuntimeError("logger.mode != disabled needs wandb: pip install wandb, or logger=disabled") from e
        wandb_dir = self.run_dir / "wandb_root"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.mode == "offline":
            os.environ["WANDB_MODE"] = "offline"   # belt and braces: offline never touches the network
        runs = []
        for i, member in enumerate(self.members):
            # a stable id per member makes resume=true continue the same W&B run
            run_id = f"{run_name}-m{i}".replace("/", "-")[:120]
            runs.append(wandb.init(
                project=self.cfg.project, entity=self.cfg.entity, group=self.cfg.group or run_name,
                name=f"{run_name}-m{i}-seed{member['seed']}", id=run_id, job_type="train",
                config={**config, "member": member}, dir=str(wandb_dir), mode=self.cfg.mode,
                reinit="create_new", resume="allow" if resume else None,
                settings=wandb.Settings(silent=True, console="off", x_disable_stats=True)))
        return runs

    def log(self, update: int, rows: list[dict[str, float]]) -> None:
        for i, row in enumerate(rows):
            if self.jsonl:
                record = {"update": update, "member": i, **self.members[i], **row}
                self.jsonl.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
            if self.wandb_runs:
                self.wandb_runs[i].log({k: v for k, v in row.items() if math.isfinite(v)}, step=update)
        if self.jsonl:
            self.jsonl.flush()

    def summary(self, rows: list[dict[str, Any]]) -> None:
        for run, row in zip(self.wandb_runs, rows, strict=False):
            run.summary.update(row)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        for run in self.wandb_runs:
            run.finish()
        self.wandb_runs = []
