"""Baseline policies and the full-information oracle, one file per family, behind one interface
(`splitrl.baselines.base.PolicyBase`): fixed and offline (`fixed`), one-slot controllers and the
oracle (`dpp`), SplitLLM's DP (`splitllm`), Chen et al.'s layer-wise PPO (`chen`), and policies trained
by `splitrl-train` (`trained`)."""

from __future__ import annotations

from splitrl.baselines.base import PolicyBase, ScenarioSpec
from splitrl.baselines.chen import ChenPPO
from splitrl.baselines.dpp import BatteryDPP, GreedyLatency, HeatDPP, LookaheadOracle, MyopicDPP, Oracle
from splitrl.baselines.fixed import CloudOnly, EdgeOnly, RandomPolicy, StaticSplit
from splitrl.baselines.splitllm import SplitLLMDP
from splitrl.baselines.trained import Trained

BASELINES = {"cloud_only": CloudOnly, "edge_only": EdgeOnly, "random": RandomPolicy, "static_split": StaticSplit,
             "greedy_latency": GreedyLatency, "myopic_dpp": MyopicDPP, "heat_dpp": HeatDPP, "battery_dpp": BatteryDPP,
             "splitllm_dp": SplitLLMDP, "chen_ppo": ChenPPO, "oracle_dpp": Oracle, "mpc_oracle": LookaheadOracle}


def make_baseline(name: str, **kwargs) -> PolicyBase:
    """A baseline by name (BASELINES); keyword arguments set its fields (e.g. sla_factor)."""
    if name not in BASELINES:
        raise ValueError(f"baseline {name!r} is unknown; known: {sorted(BASELINES)} (trained policies: give a run dir)")
    return BASELINES[name](**kwargs)


__all__ = ["BASELINES", "PolicyBase", "ScenarioSpec", "Trained", "make_baseline"]
