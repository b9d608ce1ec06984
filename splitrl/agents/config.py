"""Typed, frozen training config: built once in `splitrl.train` from the Hydra tree (see
`splitrl.config.build`); nothing below the entry point sees a DictConfig."""

from __future__ import annotations

import dataclasses

from splitrl.config import ConfigError

POLICIES = ("hierarchical", "flat")
ENVS = ("split", "split_flat", "gymnax")
CRITICS = ("separate", "shared")
LOGGER_MODES = ("online", "offline", "disabled")
SHARD_AXES = ("auto", "members", "envs")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    name: str                 # label used in run names
    policy: str               # hierarchical | flat
    env: str                  # split (hierarchical actions) | split_flat (FlatSplitEnv) | gymnax
    gymnax_id: str            # gymnax environment id when env = gymnax (e.g. CartPole-v1)
    num_envs: int             # parallel environments per policy
    num_steps: int            # rollout length per update
    total_timesteps: int      # env steps per policy over the whole run
    update_epochs: int        # passes over each rollout
    num_minibatches: int      # minibatches per epoch
    gamma: float
    gae_lambda: float
    clip_eps: float
    clip_value: bool          # PPO value clipping
    ent_coef: float
    vf_coef: float
    max_grad_norm: float
    lr: float
    anneal_lr: bool           # linear decay of the learning rate to 0 over the run
    normalize_advantages: bool
    hidden: tuple[int, ...]   # MLP widths of every torso
    critic: str               # separate | shared
    manager_lr_scale: float   # manager step size / worker step size (1.0: one timescale; < 1: slower manager)

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.batch_size

    def check(self, where: str) -> None:
        for key, allowed in (("policy", POLICIES), ("env", ENVS), ("critic", CRITICS)):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"config {where}.{key} = {getattr(self, key)!r}: must be one of {allowed}")
        if self.policy == "hierarchical" and self.env != "split":
            raise ConfigError(f"config {where}: policy = hierarchical needs env = split, got {self.env!r}")
        for key in ("num_envs", "num_steps", "total_timesteps", "update_epochs", "num_minibatches"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"config {where}.{key} = {v!r}: must be a positive integer")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(f"config {where}: num_envs·num_steps = {self.num_envs}·{self.num_steps} = "
                              f"{self.batch_size} is not divisible by num_minibatches = {self.num_minibatches}")
        if self.num_updates < 1:
            raise ConfigError(f"config {where}.total_timesteps = {self.total_timesteps} is less than one "
                              f"update (num_envs·num_steps = {self.batch_size})")
        for key in ("gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef", "max_grad_norm", "lr"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"config {where}.{key} = {v!r}: must be a number (YAML: write 3.0e-4, not 3e-4)")
        for key in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config {where}.{key} = {getattr(self, key)}: must be in [0, 1]")
        for key in ("clip_eps", "lr", "max_grad_norm", "manager_lr_scale"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config {where}.{key} = {getattr(self, key)}: must be > 0")
        if not self.hidden or any(w < 1 for w in self.hidden):
            raise ConfigError(f"config {where}.hidden = {list(self.hidden)}: must be positive widths")


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
