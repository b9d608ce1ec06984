"""Profiles: model architectures, devices, cost and PPL tables, validated on load."""

from splitrl.profiles.analytic import analytic_costs
from splitrl.profiles.errors import ProfileError
from splitrl.profiles.fit import boundary_bytes_per_token, check_fit, feasible_boundaries, placement_memory
from splitrl.profiles.schema import Device, ModelArch
from splitrl.profiles.store import (
    data_root,
    list_devices,
    list_models,
    load_costs,
    load_device,
    load_model,
    load_ppl,
)
from splitrl.profiles.table_schema import BlockCost, CostTable, PPLSweep, PPLTable

__all__ = [
    "BlockCost", "CostTable", "Device", "ModelArch", "PPLSweep", "PPLTable", "ProfileError", "analytic_costs",
    "boundary_bytes_per_token", "check_fit", "data_root", "feasible_boundaries", "list_devices", "list_models",
    "load_costs", "load_device", "load_model", "load_ppl", "placement_memory",
]
