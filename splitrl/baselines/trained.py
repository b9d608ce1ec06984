"""A policy trained by `splitrl-train` (HPPO or flat PPO), loaded from its run directory and run greedily."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from splitrl.baselines.base import PolicyBase
from splitrl.env.types import Action
from splitrl.training.rundir import RunDir, RunDirError


# ----------------------------------------------------------------------------- trained checkpoints
def seed_members(members: list[dict]) -> int:
    """How many training seeds a run holds: its member count when the members differ only by seed
    (`splitrl-train num_seeds=N`), else 1 (the members of a hyperparameter grid are choices, not samples)."""
    rest = [{k: v for k, v in m.items() if k != "seed"} for m in members]
    return len(members) if all(r == rest[0] for r in rest) else 1


@dataclasses.dataclass(frozen=True)
class Trained(PolicyBase):
    """A policy trained by `splitrl-train` (HPPO or flat PPO), run greedily (argmax). `init` loads
    the run directory's parameters (member `member` of the vmapped batch; splitrl.training.rundir) and
    checks the run was trained on this scenario (by id) with this env's shapes."""
    name: str
    run_dir: str
    policy: str = "hierarchical"     # hierarchical | flat (from the run's resolved_config.yaml)
    hidden: tuple = (64, 64)
    critic: str = "separate"
    member: int = 0
    flat_env: Any = None             # set by bind() for flat policies (the FlatSplitEnv action subset)

    @staticmethod
    def from_run_dir(run_dir: str, name: str | None = None, member: int = 0) -> Trained:
        run = RunDir.read(run_dir)
        a = run.agent
        return Trained(name=name or a.name, run_dir=str(run.path), policy=a.policy, hidden=a.hidden, critic=a.critic,
                       member=member)

    def scenario_id(self) -> str | None:
        return RunDir.read(self.run_dir).scenario_id

    def seed_members(self) -> int:
        return seed_members(RunDir.read(self.run_dir).summary().get("members") or [{}])

    def _net_from_obs(self, obs):
        from splitrl.agents.networks import HierarchicalPolicy
        L1, F, U = obs.boundary_mask.shape[0], obs.format_mask.shape[0], obs.unit_mask.shape[1]
        return HierarchicalPolicy(L1, F, U, self.hidden, self.critic)

    def _net(self, env):
        from splitrl.agents.networks import FlatPolicy, HierarchicalPolicy
        if self.policy == "hierarchical":
            return HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, self.hidden, self.critic)
        from splitrl.env.flat import PATTERNS
        return FlatPolicy(env.num_boundaries * env.num_formats * len(PATTERNS), self.hidden, self.critic)

    def init(self, env, env_params, spec=None, key=None):
        run = RunDir.read(self.run_dir)
        if spec is not None and spec.info.id != run.scenario_id:
            raise RunDirError(f"{self.run_dir} was trained on scenario {run.scenario_id!r}, not {spec.info.id!r}")
        params, _ = run.params(self.member)
        params = jax.tree.map(jnp.asarray, params)
        # shape check against a fresh init on this env: only its shapes (eval_shape), so nothing is
        # computed or compiled (an eager flax init compiles each of its ops, seconds per load)
        def fresh_init():
            obs, _ = env.reset_env(jax.random.PRNGKey(0), env_params)
            if self.policy == "flat":
                from splitrl.env.flat import FlatSplitEnv
                obs = FlatSplitEnv(env, env_params)._obs(obs, env_params)
            return self._net(env).init(jax.random.PRNGKey(0), obs)
        ref = jax.eval_shape(fresh_init)
        if jax.tree.structure(ref) != jax.tree.structure(params):
            raise RunDirError(f"{run.path}: the parameters are not a {self.policy} policy of this splitrl's networks; retrain")
        for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(params), strict=True):
            if want.shape != got.shape:
                raise RunDirError(
                    f"{run.path}: parameter {jax.tree_util.keystr(path)} has shape {tuple(got.shape)}, this env needs "
                    f"{tuple(want.shape)}: trained on another model (layers, units), or with another observation "
                    f"contract (this splitrl observes {env.obs_dim} features, splitrl/env/features.py); retrain it")
        return params

    def bind(self, env, env_params) -> Trained:
        if self.policy != "flat":
            return self
        from splitrl.env.flat import FlatSplitEnv
        return dataclasses.replace(self, flat_env=FlatSplitEnv(env, env_params))

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        if self.policy == "hierarchical":
            net = self._net_from_obs(obs)
            a = net.greedy(pparams, obs)
            return Action(boundary=a.boundary, fmt=a.fmt, units=a.units)
        flat = self.flat_env
        net = self._net(flat.env)
        a = net.greedy(pparams, flat._obs(obs, env_params))
        return flat.to_action(a)

