"""The learner's typed, frozen config (PPO hyperparameters and the policy it trains): built once at the
entry point (`splitrl.config.build`); nothing below it sees a DictConfig."""

from __future__ import annotations

import dataclasses

from splitrl.config import ConfigError, build

POLICIES = ("hierarchical", "flat")
ENVS = ("split", "split_flat", "gymnax")
CRITICS = ("separate", "shared")
GUIDES = ("none", "dpp")


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
    guide: str                # none | dpp: label visited states with the myopic DPP controller's action
    guide_coef: float         # weight of the guide's behaviour-cloning loss at the first update ...
    guide_final: float        # ... and from `guide_anneal` of the run on (linear in between)
    guide_anneal: float       # share of the updates over which the weight goes from guide_coef to guide_final
    guide_states: int         # states labelled per update
    team_spirit: float        # a fleet's devices learn from (1 − τ)·own reward + τ·the fleet's mean (0: own, 1: team)
    guide_congestion: float   # fleets: 0 labels with myopic DPP; κ > 0 with congestion DPP at κ (splitrl/agents/guide.py)
    pretrain_rounds: int      # DAgger rounds imitating the guide before PPO starts (0: none; splitrl/agents/pretrain.py)
    pretrain_states: int      # ... states labelled per round (the rounds' labels aggregate)
    pretrain_steps: int       # ... Adam steps per round on the aggregated labels
    pretrain_lr: float        # ... their step size (behaviour cloning takes larger steps than PPO's trust region)

    @classmethod
    def from_dict(cls, data: dict, where: str) -> PPOConfig:
        """The typed config from a mapping (a splitrl/conf/agent YAML, a run's resolved config); errors name `where`."""
        return build(cls, {**data, "hidden": tuple(data.get("hidden", ()))}, where)

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
        if self.guide not in GUIDES:
            raise ConfigError(f"config {where}.guide = {self.guide!r}: must be one of {GUIDES}")
        if self.guide == "dpp" and self.policy != "hierarchical":
            raise ConfigError(f"config {where}: guide = dpp labels hierarchical actions; it needs policy = hierarchical")
        if self.guide == "dpp" and (self.guide_states < 1 or min(self.guide_coef, self.guide_final) < 0
                                       or not 0 < self.guide_anneal <= 1):
            raise ConfigError(f"config {where}: guide_states = {self.guide_states} must be >= 1 and guide_coef = "
                              f"{self.guide_coef}, guide_final = {self.guide_final} >= 0, guide_anneal = "
                              f"{self.guide_anneal} in (0, 1]")
        for key in ("num_envs", "num_steps", "total_timesteps", "update_epochs", "num_minibatches", "pretrain_states",
                    "pretrain_steps", "pretrain_rounds"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "pretrain_rounds" else 1):
                raise ConfigError(f"config {where}.{key} = {v!r}: must be a "
                                  f"{'non-negative' if key == 'pretrain_rounds' else 'positive'} integer")
        if self.pretrain_rounds and self.guide != "dpp":
            raise ConfigError(f"config {where}.pretrain_rounds = {self.pretrain_rounds}: the rounds imitate the DPP "
                              f"guide; set guide = dpp (got {self.guide!r}) or pretrain_rounds = 0")
        if self.batch_size % self.num_minibatches:
            raise ConfigError(f"config {where}: num_envs·num_steps = {self.num_envs}·{self.num_steps} = "
                              f"{self.batch_size} is not divisible by num_minibatches = {self.num_minibatches}")
        if self.num_updates < 1:
            raise ConfigError(f"config {where}.total_timesteps = {self.total_timesteps} is less than one "
                              f"update (num_envs·num_steps = {self.batch_size})")
        for key in ("gamma", "gae_lambda", "clip_eps", "ent_coef", "vf_coef", "max_grad_norm", "lr", "team_spirit", "pretrain_lr",
                    "guide_congestion"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"config {where}.{key} = {v!r}: must be a number (YAML: write 3.0e-4, not 3e-4)")
        for key in ("gamma", "gae_lambda", "team_spirit"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config {where}.{key} = {getattr(self, key)}: must be in [0, 1]")
        if self.guide_congestion < 0:
            raise ConfigError(f"config {where}.guide_congestion = {self.guide_congestion}: must be >= 0 (0: the "
                              "myopic DPP guide; κ > 0: congestion DPP at κ, a fleet's only)")
        for key in ("clip_eps", "lr", "max_grad_norm", "manager_lr_scale", "pretrain_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config {where}.{key} = {getattr(self, key)}: must be > 0")
        if not self.hidden or any(w < 1 for w in self.hidden):
            raise ConfigError(f"config {where}.hidden = {list(self.hidden)}: must be positive widths")
