"""Agents: networks and policies (`networks`), the hierarchical action distribution
(`distributions`), PPO (`ppo`) and the typed training config (`config`)."""

from __future__ import annotations

from splitrl.agents.config import PPOConfig
from splitrl.agents.networks import FlatPolicy, HierarchicalPolicy


def make_policy(cfg: PPOConfig, env, env_params):
    """The policy `cfg.policy` names, sized from the environment's static attributes."""
    if cfg.policy == "hierarchical":
        return HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, cfg.hidden, cfg.critic)
    return FlatPolicy(env.action_space(env_params).n, cfg.hidden, cfg.critic)
