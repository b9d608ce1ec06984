"""The pure-JAX edge/cloud split-inference environment (gymnax 1.x API).

Imports are lazy (PEP 562): `splitrl.env.features`, the observation contract, is used by the edge
runtime, which must not pay for importing JAX."""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ScenarioError": "scenario", "ScenarioInfo": "scenario", "check_params": "scenario", "make": "scenario",
    "make_with_info": "scenario", "SplitEnv": "split_env", "Action": "types", "EnvParams": "types",
    "EnvState": "types", "Observation": "types", "FleetEnv": "fleet", "FleetParams": "types",
    "make_fleet": "fleet_scenario", "make_fleet_with_info": "fleet_scenario",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'splitrl.env' has no attribute {name!r}")
    return getattr(importlib.import_module(f"splitrl.env.{_EXPORTS[name]}"), name)
