"""Typed, frozen configs of a training run (the learner's own config is `splitrl.agents.config.PPOConfig`):
built once in `splitrl.training.train` from the Hydra tree; nothing below the entry point sees a DictConfig."""

from __future__ import annotations

import dataclasses

from splitrl.config import ConfigError

LOGGER_MODES = ("online", "offline", "disabled")
SHARD_AXES = ("auto", "members", "envs")


@dataclasses.dataclass(frozen=True)
class LoggerConfig:
    mode: str                 # online | offline | disabled (W&B)
    project: str              # W&B project
    entity: str | None        # W&B entity (online only)
    group: str | None         # W&B group; default: the run name
    jsonl: bool               # write metrics.jsonl in the run dir
    console: bool             # print one summary line per chunk

    def check(self, where: str) -> None:
        if self.mode not in LOGGER_MODES:
            raise ConfigError(f"config {where}.mode = {self.mode!r}: must be one of {LOGGER_MODES}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int                 # first seed; the batch uses seed, seed+1, ... seed+num_seeds-1
    num_seeds: int            # seeds trained in one vmapped compile
    lr_grid: tuple[float, ...]        # vmapped learning rates (empty: agent.lr)
    ent_coef_grid: tuple[float, ...]  # vmapped entropy coefficients (empty: agent.ent_coef)
    reward_v_grid: tuple[float, ...]  # vmapped Lyapunov V values (empty: the scenario's)
    reward_v_field: str | None        # EnvParams field that holds V (needed when reward_v_grid is set)
    updates_per_chunk: int    # updates per jitted call; the host logs between calls
    checkpoint_every: int     # updates between orbax checkpoints (a multiple of updates_per_chunk; 0: never)
    keep_checkpoints: int     # how many checkpoints to keep
    resume: bool              # continue from the last checkpoint in the run dir
    progress: bool            # rich progress bar
    eval_episodes_envs: int   # envs for the final greedy / random-policy evaluation
    devices: int | str        # devices to train on: a count, or "all" (every device of jax's default backend)
    shard: str                # auto | members | envs: the batch axis split over the devices

    def check(self, where: str) -> None:
        if self.devices != "all" and (isinstance(self.devices, bool) or not isinstance(self.devices, int)
                                      or self.devices < 1):
            raise ConfigError(f"config {where}devices = {self.devices!r}: must be a positive integer or 'all'")
        if self.shard not in SHARD_AXES:
            raise ConfigError(f"config {where}shard = {self.shard!r}: must be one of {SHARD_AXES}")
        if self.num_seeds < 1:
            raise ConfigError(f"config {where}num_seeds = {self.num_seeds}: must be >= 1")
        if self.updates_per_chunk < 1:
            raise ConfigError(f"config {where}updates_per_chunk = {self.updates_per_chunk}: must be >= 1")
        if self.checkpoint_every < 0 or (self.checkpoint_every and self.checkpoint_every % self.updates_per_chunk):
            raise ConfigError(f"config {where}checkpoint_every = {self.checkpoint_every}: must be 0 or a multiple "
                              f"of updates_per_chunk = {self.updates_per_chunk}")
        if self.reward_v_grid and not self.reward_v_field:
            raise ConfigError(f"config {where}reward_v_grid = {list(self.reward_v_grid)} needs reward_v_field: "
                              "the name of the EnvParams field that holds V")
        if any(v <= 0 for v in self.lr_grid):
            raise ConfigError(f"config {where}lr_grid = {list(self.lr_grid)}: every learning rate must be > 0")
