"""The edge's heat: a first-order (lumped RC) thermal model and the governor's throttle curve. Pure JAX.

One thermal mass at temperature T, heated by the power P the edge draws in the slot and cooled toward
the ambient through a thermal resistance R (K/W) with time constant τ; exact over a slot of length Δ
for constant P:

    T' = T_amb + (T − T_amb)·e^(−Δ/τ) + R·P·(1 − e^(−Δ/τ))

The governor cuts the clock linearly between the throttle point and the limit:

    speed(T) = 1 − (1 − s_min)·clip((T − T_throttle) / (T_limit − T_throttle), 0, 1)

and every edge compute time of the slot is divided by speed(T) at the slot's start (the joules per
token are kept: a lower clock at a lower voltage does the same work in about the same energy, an
assumption). P is the slot's mean edge power: the energy of the requests served in it (compute,
radio, idle while waiting: `request_cost`'s energy) plus idle power for the rest of the slot. With
r_th = 0 the temperature stays at the ambient and nothing is throttled (every scenario without a
`heat` section). Parameters and their sources: docs/environment.md ("Heat").
"""

from __future__ import annotations

import jax.numpy as jnp

from splitrl.env.types import EnvParams, EnvState, HeatParams


def speed(h: HeatParams, temp_c):
    """Share of full compute speed at temperature `temp_c` (1 below the throttle point)."""
    span = jnp.maximum(h.limit_c - h.throttle_c, 1e-6)
    return 1.0 - (1.0 - h.min_speed) * jnp.clip((temp_c - h.throttle_c) / span, 0.0, 1.0)


def slot_power(power_idle_w, slot_s, served, latency, energy):
    """Mean edge power over a slot (W): the served requests' energy, then idle for the rest of the slot."""
    return (served * energy + power_idle_w * jnp.maximum(slot_s - served * latency, 0.0)) / slot_s


def slot_energy(params: EnvParams, served, m: dict):
    """The edge's joules in a slot (`slot_power` x slot_s) from the served requests and the priced metrics `m`."""
    return slot_power(params.costs.power_idle_w, params.slot_s, served, m["latency"], m["energy"]) * params.slot_s


def next_temp(h: HeatParams, temp_c, power_w, slot_s):
    """The temperature after a slot at constant power `power_w` (the exact RC step)."""
    decay = jnp.exp(-slot_s / h.tau_s)
    return h.ambient_c + (temp_c - h.ambient_c) * decay + h.r_th * power_w * (1.0 - decay)


def steady_temp(h: HeatParams, power_w):
    """Where the temperature settles under constant power."""
    return h.ambient_c + h.r_th * power_w


def edge_speed_of(params: EnvParams, state: EnvState, has_heat: bool):
    """The edge's compute speed in the coming slot, from its temperature (a plain 1.0 in an env without heat,
    so `request_cost` traces no throttle)."""
    return speed(params.heat, state.temp_c) if has_heat else 1.0


def temp_after(params: EnvParams, state: EnvState, q: dict, has_heat: bool):
    """The edge's temperature after the slot, heated by the slot's mean power (`q`: the slot's queues, with
    its edge energy `slot_j`)."""
    if not has_heat:
        return state.temp_c
    return next_temp(params.heat, state.temp_c, q["slot_j"] / params.slot_s, params.slot_s)


def start_temp(h: HeatParams, u, has_heat: bool):
    """An episode's starting temperature: uniform in [start_lo_c, start_hi_c] from `u` (the ambient without heat)."""
    if not has_heat:
        return jnp.asarray(h.ambient_c, jnp.float32)
    return h.start_lo_c + u * (h.start_hi_c - h.start_lo_c)
