"""Baseline policies and the full-information oracle: one interface, pure JAX, usable in the same
vmapped rollout as a trained agent (`splitrl.evaluation.run.rollout`).

A policy is a frozen dataclass (hashable, so it is a static jit argument; equal fields share compiled
code) with two methods:

    init(env, env_params, spec, key) -> pparams
        host side, once per scenario: precompute tables, solve a DP, train a network. `spec` is the
        `ScenarioSpec` (name, mapping, ScenarioInfo) the env was built from.
    __call__(pparams, key, obs, state, env_params, step_key) -> Action
        pure, one unbatched env (the rollout vmaps). `key` is the policy's own randomness.

What a policy may read. `obs` is what the agent sees. `state` is the EnvState: a causal policy reads
from it only fields the observation also shows, unnormalised (`bw_est`, `rtt`, `loss_p`, `snr_db`,
`cloud_load`, `prompt_len`, `output_len`, `backlog`, `z_energy`, `z_acc`, `last_boundary`).
`step_key` is the key the env will step this slot with: **only the oracle reads it** (with `state`'s
hidden channel latents it determines the slot's true bandwidth, RTT, fading and arrivals).

The placements the searching baselines consider are the env's DPP candidates (splitrl/env/dpp.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class ScenarioSpec(NamedTuple):
    """What a scenario was built from: its name, its YAML mapping and the ScenarioInfo. A fleet's device
    type has no mapping of its own (data None: the fleet changes the scenario's on the host; its
    ScenarioInfo is built from the changed one, splitrl.evaluation.fleet.device_type_specs)."""
    name: str
    data: dict | None
    info: Any


class PolicyBase:
    """`bind(env, env_params)` returns the policy specialised to a scenario's static structure (the
    oracle keeps the env it simulates); host side, before `init`. `lookahead` > 0: the evaluation passes
    the env's keys of this slot and the next lookahead − 1 ([lookahead, 2]) as `step_key` (the MPC oracle)."""
    lookahead = 0

    def bind(self, env, env_params):
        return self
