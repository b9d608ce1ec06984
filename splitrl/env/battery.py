"""The edge's battery (docs/environment.md, "Battery"): whether the edge may compute, and the charge an
episode starts from with its even spend-down. The drain and the battery queue Z_B move with the other
queues in `splitrl.env.slot.slot_queues`. Pure JAX."""

from __future__ import annotations

import jax.numpy as jnp

from splitrl.env.types import Conditions, EnvParams, EnvState


def edge_available(cond: Conditions, b, edge_units):
    """(b, edge units) where the edge may compute; cloud-only where it may not (its battery is at the floor).
    Traces nothing where `cond.edge_up` is a plain 1.0 (no battery)."""
    if isinstance(cond.edge_up, float) and cond.edge_up == 1.0:
        return b, edge_units
    up = cond.edge_up > 0.5
    return jnp.where(up, b, 0), edge_units * up


def edge_up_of(params: EnvParams, state: EnvState, has_battery: bool):
    """1.0 while the edge may compute, 0.0 once its battery is at the floor (a plain 1.0 without a battery)."""
    return (state.soc > params.battery.floor).astype(jnp.float32) if has_battery else 1.0


def start(params: EnvParams, u, has_battery: bool) -> dict:
    """An episode's charge (uniform in the start range, drawn from `u`), Z_B = 0 and the even spend-down to
    the floor, J per slot (without a battery: full, and an allowance of 1e30 J so Z_B never grows)."""
    b = params.battery
    if not has_battery:
        return dict(soc=jnp.float32(1.0), z_battery=jnp.float32(0.0), battery_allow_j=jnp.float32(1e30))
    soc = b.start_lo + u * (b.start_hi - b.start_lo)
    allow = spend_down_j(params, soc, params.max_steps_in_episode.astype(jnp.float32))
    return dict(soc=soc, z_battery=jnp.float32(0.0), battery_allow_j=allow)


def spend_down_j(params: EnvParams, soc, slots):
    """J a slot that spend the charge `soc` down to the floor evenly over `slots` slots (at reset, over the
    episode: the battery queue's allowance; mid-episode, over the slots left: `battery_dpp`'s reserve test)."""
    return (soc - params.battery.floor) * params.battery.capacity_j / slots


def drain(params: EnvParams, state: EnvState, slot_j):
    """(Z_B', charge') after a slot: the slot's edge energy `slot_j` (`heat.slot_power` x slot_s) drains
    the battery, and Z_B counts what was spent ahead of the even spend-down to the floor (without a
    battery: an allowance of 1e30 J and a capacity of 1e30 J, so Z_B stays 0 and the charge at 1)."""
    r = params.reward
    z_battery = jnp.clip(state.z_battery + (slot_j - state.battery_allow_j) / r.energy_ref_j, 0.0, r.z_max)
    return z_battery, state.soc - slot_j / params.battery.capacity_j
