"""One slot of one device, shared by the single-device env (splitrl/env/split_env.py), the fleet
(splitrl/env/fleet.py) and the DPP controllers (splitrl/env/dpp.py): the slot's link conditions, its
request priced under the action, the queues and the drift-plus-penalty objective (`slot_queues`), the
state after it and its info. Pure JAX."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln

from splitrl.env import battery, cloud, heat
from splitrl.env import channel as ch
from splitrl.env.battery import edge_available
from splitrl.env.cost import project_action, request_cost
from splitrl.env.draws import uniforms
from splitrl.env.fuse import materialise
from splitrl.env.types import Action, Conditions, EnvParams, EnvState


def _uniforms(key: jax.Array, n: int) -> jax.Array:
    """n uniforms in (0, 1), open at both ends so the inverse normal CDF stays finite."""
    return materialise(uniforms(key, n, 1e-7, 1.0 - 1e-7))


def lyapunov(params: EnvParams, backlog, z_energy, z_acc) -> jax.Array:
    """L(Θ) = ½[(Q/q_max)² + Z_E² + Z_A²]: the quadratic Lyapunov function of the normalised queues."""
    return 0.5 * ((backlog / params.workload.q_max) ** 2 + z_energy**2 + z_acc**2)


def slot_penalty(params: EnvParams, m: dict) -> jax.Array:
    """The penalty of the drift-plus-penalty (before V): w_lat lat/lat_ref + w_en E/E_ref + w_acc ΔPPL/acc_ref
    + w_fail · failed (a request that never gets an answer costs more than any slow one) + w_cloud · the
    cloud GPU-seconds it used / a cloud-only request's (what the cloud charges; 0 unless a scenario prices it)."""
    r = params.reward
    return (r.w_lat * m["latency"] / r.lat_ref_s + r.w_en * m["energy"] / r.energy_ref_j
            + r.w_acc * m["delta_ppl"] / r.acc_ref + r.w_fail * m["failed"]
            + r.w_cloud * (m["cloud_prefill_s"] + m["cloud_decode_s"]) / r.cloud_ref_s)


def slot_queues(params: EnvParams, state: EnvState, m: dict, arrivals) -> dict:
    """One slot of the queues and the drift-plus-penalty objective, from a request's priced metrics
    `m` (splitrl.env.cost.request_cost) and the slot's arrivals. The env's step and the DPP baselines
    both call this, so a controller that minimises it minimises exactly what the env charges."""
    r, w = params.reward, params.workload
    served = jnp.minimum(state.backlog, params.slot_s / jnp.maximum(m["latency"], 1e-9))
    q_next = jnp.maximum(state.backlog - served, 0.0) + arrivals
    drops = jnp.maximum(q_next - w.q_max, 0.0)
    q_next = jnp.minimum(q_next, w.q_max)
    # FIFO: this slot's arrivals queue behind the backlog left after serving, at this slot's service time
    queue_delay = jnp.maximum(state.backlog - served, 0.0) * m["latency"]
    z_energy = jnp.clip(state.z_energy + (m["energy"] - r.energy_budget_j) / r.energy_ref_j, 0.0, r.z_max)
    z_acc = jnp.clip(state.z_acc + (m["delta_ppl"] - r.acc_budget) / r.acc_ref, 0.0, r.z_max)
    slot_j = heat.slot_energy(params, served, m)
    z_battery, soc = battery.drain(params, state, slot_j)
    penalty = slot_penalty(params, m)
    drift = (lyapunov(params, q_next, z_energy, z_acc)
             - lyapunov(params, state.backlog, state.z_energy, state.z_acc)
             + 0.5 * (z_battery**2 - state.z_battery**2))
    return {"served": served, "backlog": q_next, "drops": drops, "z_energy": z_energy, "z_acc": z_acc,
            "z_battery": z_battery, "soc": soc, "slot_j": slot_j,
            "queue_delay": queue_delay, "response_time": queue_delay + m["latency"],
            "penalty": penalty, "drift": drift, "objective": r.V * penalty + drift}


def poisson_icdf(rate, u, max_arrivals: int):
    """Poisson draw by inverting the CDF over 0..max_arrivals (jax.random.poisson is a rejection loop:
    under vmap it costs more than the rest of the step). The host checks the tail is negligible."""
    k = jnp.arange(max_arrivals + 1, dtype=jnp.float32)
    logpmf = k * jnp.log(jnp.maximum(rate, 1e-12)) - rate - gammaln(k + 1.0)
    cdf = jnp.cumsum(jnp.exp(logpmf))
    return jnp.minimum(jnp.sum(u > cdf), max_arrivals).astype(jnp.float32)


def link_conditions(kind: str, p, state: EnvState, z, u, cloud_load, cloud_wait, edge_speed, sessions: bool = False,
                    edge_up=1.0):
    """This slot's link (bandwidth, reachability, RTT, fading, SNR) drawn from the step's normals `z` and
    uniforms `u`, with the cloud's load and admission wait as given (the single-device env draws them
    from its exogenous load, the fleet env derives them from its shared queue) and the edge's speed
    (`heat.edge_speed_of`), and the conversation's cache where the env has sessions (else none: a plain 0.0, so
    `request_cost` skips the migration when it traces). Returns (Conditions, the updated latent link
    fields of the state)."""
    bw, log_bw, regime, trace_pos = ch.next_bandwidth(kind, p, state.log_bw, state.regime, state.trace_pos,
                                                      z[0], u[0])
    connected, link = ch.link_up(kind, p, state.link, regime, trace_pos, u[5])
    log_sigma_h = ch.ar1(state.log_sigma_h, p.fade_log_mean, p.fade_rho, p.fade_log_std, z[2])
    cond = Conditions(bw=bw, rtt=ch.rtt_of(p, bw, z[1]), loss_p=ch.loss_probability(p.h_th, log_sigma_h),
                      snr_db=p.snr_db_mean + p.snr_db_std * z[3], cloud_load=cloud_load, cloud_wait=cloud_wait,
                      connected=connected, reconnect=p.reconnect_s * (1.0 - state.connected) * connected,
                      edge_speed=edge_speed, ctx=state.ctx_len if sessions else 0.0,
                      kv_split=state.kv_split if sessions else 0.0, edge_up=edge_up)
    return cond, dict(log_bw=log_bw, regime=regime, trace_pos=trace_pos, log_sigma_h=log_sigma_h, link=link)


def price_slot(params: EnvParams, state: EnvState, action: Action, cond: Conditions, arq_draws, arrivals):
    """The slot's request priced under the (projected) action and the device's queues moved:
    (boundary, format, edge units, metrics `request_cost`, queues `slot_queues`)."""
    b, fmt, edge_units = project_action(params, action.boundary, action.fmt, action.units)
    b, edge_units = edge_available(cond, b, edge_units)
    m = request_cost(params, b, fmt, edge_units, state.prompt_len, state.output_len, cond, draws=arq_draws)
    return b, fmt, edge_units, m, slot_queues(params, state, m, arrivals)


def advance_state(params: EnvParams, state: EnvState, cond: Conditions, q: dict, b, fmt, edge_units, request,
                  z_est, latent: dict, temp_c, session=None) -> EnvState:
    """The state after a priced slot: what was measured, the queues, the next request (prompt, output),
    the edge's temperature and the next request's session (`next_session`; unchanged when None)."""
    ctx_len, kv_split = (state.ctx_len, state.kv_split) if session is None else session
    return state.replace(ctx_len=ctx_len, kv_split=kv_split, soc=q["soc"], z_battery=q["z_battery"],
        bw=cond.bw, bw_est=cond.bw * jnp.exp(params.channel.bw_est_log_std * z_est), rtt=cond.rtt,
        loss_p=cond.loss_p, snr_db=cond.snr_db, cloud_load=cond.cloud_load,
        cloud_wait_est=cloud.expected_wait(params.cloud, cond.cloud_load), connected=cond.connected,
        backlog=q["backlog"], z_energy=q["z_energy"], z_acc=q["z_acc"], prompt_len=request[0],
        output_len=request[1], last_boundary=b, last_fmt=fmt, last_edge_frac=jnp.mean(edge_units),
        time=state.time + 1, temp_c=temp_c, **latent)


def slot_info(m: dict, q: dict, cond: Conditions, arrivals, b, fmt, edge_units, temp_c) -> dict:
    """The slot's raw metrics (the module docstring lists them); `temp_c`: the edge's, at the slot's start."""
    return {
        "latency": m["latency"], "energy": m["energy"], "delta_ppl": m["delta_ppl"], "backlog": q["backlog"],
        "bytes_sent": m["bytes_up"], "bytes_recv": m["bytes_down"], "served": q["served"], "arrivals": arrivals,
        "drops": q["drops"], "failed": m["failed"] * q["served"], "request_failed": m["failed"],
        "timed_out": m["timed_out"],
        "fell_back": m["fell_back"], "response_time": q["response_time"], "queue_delay": q["queue_delay"],
        "cloud_wait": m["cloud_wait"], "connected": cond.connected, "objective": q["objective"],
        "penalty": q["penalty"], "drift": q["drift"], "bandwidth": cond.bw, "cloud_load": cond.cloud_load,
        "boundary": b.astype(jnp.float32), "fmt": fmt.astype(jnp.float32), "edge_frac": jnp.mean(edge_units),
        "temp_c": temp_c, "edge_speed": cond.edge_speed * jnp.ones_like(temp_c),
        "cloud_s": m["cloud_prefill_s"] + m["cloud_decode_s"], "soc": q["soc"], "z_battery": q["z_battery"],
        "ctx_len": cond.ctx * jnp.ones_like(temp_c), "migration_s": m["migration_s"],
        "migration_bytes": m["migration_bytes"],
    }


def estimated_conditions(state: EnvState, params: EnvParams) -> Conditions:
    """What a causal policy knows of the coming slot: the bandwidth estimate and last slot's RTT, loss,
    SNR, cloud load, published cloud wait and link state (the observation shows exactly these,
    normalised). The published wait is the expected admission wait at the observed load in the
    single-device env and the shared queue's W / C in the fleet. A link that was down is expected to
    stay down."""
    return Conditions(bw=state.bw_est, rtt=state.rtt, loss_p=state.loss_p, snr_db=state.snr_db,
                      cloud_load=state.cloud_load, cloud_wait=state.cloud_wait_est,
                      connected=state.connected, reconnect=jnp.float32(0.0),
                      edge_speed=heat.speed(params.heat, state.temp_c), ctx=state.ctx_len, kv_split=state.kv_split,
                      edge_up=(state.soc > params.battery.floor).astype(jnp.float32))
