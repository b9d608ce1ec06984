"""SplitEnv: where each attention unit and FFN chunk of an LLM runs, slot by slot (gymnax 1.x).

Contract card
-------------
Slot t (length `params.slot_s`): the agent sees the bandwidth *estimate* for the slot (last slot's
measured throughput with estimation noise), RTT, packet-loss probability, SNR, the cloud's load and
published admission wait, backlog, virtual queues, the coming request's prompt/output lengths and its
last partition, and picks
  Action(boundary b in 0..L, fmt in {fp16, int8, int4}, units in {0,1}^U for layer b).
Then the slot's true bandwidth, RTT, fading and SNR are drawn, the request cost is priced from the
profile tables (splitrl/env/cost.py), requests are served and arrive, and the queues move:
  served  = min(Q, slot_s / latency)                      (fluid service, one request at a time)
  Q'      = min(max(Q - served, 0) + arrivals, q_max)     (arrivals beyond q_max are dropped)
  Z_E'    = clip(Z_E + (E - E_budget) / E_ref, 0, z_max)   Z_A' likewise with ΔPPL
Reward (drift-plus-penalty, Neely 2010), all terms normalised to O(1), with the *exact* one-slot
Lyapunov drift of L(Θ) = ½[(Q/q_max)² + Z_E² + Z_A²]:
  r = -scale * [V (w_lat lat/lat_ref + w_en E/E_ref + w_acc ΔPPL/acc_ref) + L(Θ') - L(Θ)]
Why exact and not Neely's linear bound Q(a - s) + Z_E(E - E_budget) + ...: a controller that
minimises one slot at a time may use either, but an RL agent maximises the *sum*, and the linear
terms sum to ½Z_T² - ½Σ(E_t - E_budget)² (unclipped): they pay for swinging the energy, which PPO
found (alternating edge-only and cloud-only, 7x the energy of cloud-only at a "better" objective).
The exact drift telescopes: its (discounted) sum is a non-negative combination of L(Θ_t), so the
only way to lower it is to keep the queues short. See docs/environment.md.
Observation: `Observation(features f32[F], boundary_mask bool[L+1], format_mask bool[3],
unit_mask bool[L+1, U])`; the features are the observation contract (splitrl/env/features.py; F = 19,
among them the cloud's load and its published admission wait). Episodes end by time limit only (truncated).
info: latency (the priced request's service time), energy, delta_ppl, backlog, bytes_sent (up),
bytes_recv, served, arrivals, drops, failed (failed requests served), request_failed (the priced
request failed), timed_out, fell_back (ran on the edge alone: link down), response_time (queueing
wait + service of this slot's arrivals), queue_delay, cloud_wait, connected, objective (the bracket
above, unscaled), penalty (the bracket's weighted cost before V), drift (L(Θ') - L(Θ)), bandwidth,
cloud_load, boundary, fmt, edge_frac, cloud_s (cloud GPU-seconds of the priced request), temp_c and
edge_speed (the edge's heat, splitrl/env/heat.py), ctx_len, migration_s and migration_bytes (the
conversation's cache, splitrl/env/sessions.py `migration`).
Optional static structure (`heat`, `sessions`, `battery`; docs/environment.md) adds draws, features and
info (soc, z_battery); without it the env is exactly the one above.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces
from jax.scipy.special import gammaln, ndtri

from splitrl.env import battery, cloud, heat, sessions
from splitrl.env import channel as ch
from splitrl.env import features as F
from splitrl.env.battery import edge_available
from splitrl.env.cost import project_action, request_cost
from splitrl.env.types import Action, Conditions, EnvParams, EnvState, Observation
from splitrl.profiles.formats import TX_FORMATS


def _uniforms(key: jax.Array, n: int) -> jax.Array:
    """n uniforms in (0, 1), open at both ends so the inverse normal CDF stays finite."""
    return jax.random.uniform(key, (n,), minval=1e-7, maxval=1.0 - 1e-7)


def _logit(x):
    return jnp.log(x) - jnp.log1p(-x)


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


class SplitEnv(environment.Environment[EnvState, EnvParams]):
    """Static structure only (layers, units, channel kind, table sizes); numbers live in EnvParams."""

    def __init__(self, n_layers: int, n_units: int, channel_kind: str, max_arrivals: int = 64,
                 default_params: EnvParams | None = None, scenario_id: str = "custom", load_kind: str = "ar1",
                 heat: bool = False, sessions: bool = False, battery: bool = False):
        if channel_kind not in ch.CHANNEL_KINDS:
            raise ValueError(f"channel kind {channel_kind!r} is unknown; choose one of {ch.CHANNEL_KINDS}")
        if load_kind not in cloud.LOAD_KINDS:
            raise ValueError(f"cloud load kind {load_kind!r} is unknown; choose one of {cloud.LOAD_KINDS}")
        self.n_layers, self.n_units, self.channel_kind, self.load_kind = n_layers, n_units, channel_kind, load_kind
        self.max_arrivals = max_arrivals
        self.scenario_id = scenario_id
        # the edge heats and throttles (splitrl/env/heat.py): one more reset draw, its temperature observed
        self.heat = heat
        # requests are turns of conversations whose KV cache stays where it ran (splitrl/env/sessions.py):
        # one more step draw, the cached context and its placement observed
        self.sessions = sessions
        # the edge's battery must last the episode: one more reset draw, its charge and Z_B observed
        self.battery = battery
        self.features = F.contract(heat, sessions, battery)
        self.N_RESET_DRAWS = SplitEnv.N_RESET_DRAWS + int(heat) + int(battery)
        self.N_STEP_DRAWS = SplitEnv.N_STEP_DRAWS + int(sessions)
        self._default_params = default_params

    # ---- static sizes -----------------------------------------------------------------------
    @property
    def num_boundaries(self) -> int:
        return self.n_layers + 1

    @property
    def num_formats(self) -> int:
        return len(TX_FORMATS)

    @property
    def num_units(self) -> int:
        return self.n_units

    @property
    def obs_dim(self) -> int:
        return len(self.features)

    @property
    def default_params(self) -> EnvParams:
        if self._default_params is None:
            raise ValueError("this SplitEnv was built without default params: pass params, or build it with splitrl.env.make")
        return self._default_params

    @property
    def name(self) -> str:
        return f"SplitEnv[{self.scenario_id}]"

    @property
    def num_actions(self) -> int:
        return self.num_boundaries * self.num_formats * 2**self.n_units

    # ---- dynamics ---------------------------------------------------------------------------
    N_RESET_DRAWS, N_STEP_DRAWS = 10, 17   # (reset: 5 normals, 5 uniforms; step: 8 normals, 9 uniforms)

    def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[Observation, EnvState]:
        return self._reset(_uniforms(key, self.N_RESET_DRAWS), params)

    def step_env(self, key: jax.Array, state: EnvState, action: Action, params: EnvParams
                 ) -> tuple[Observation, EnvState, jax.Array, jax.Array, dict[str, Any]]:
        return self._step(_uniforms(key, self.N_STEP_DRAWS), state, action, params)

    # Equality is the static structure: two envs that differ only in their numbers share compiled
    # code. That is safe because params always enter a trace as an argument, never as a constant.
    def _static(self) -> tuple:
        return (type(self), self.n_layers, self.n_units, self.channel_kind, self.max_arrivals, self.load_kind,
                self.heat, self.sessions, self.battery)

    def __eq__(self, other) -> bool:
        return isinstance(other, SplitEnv) and self._static() == other._static()

    def __hash__(self) -> int:
        return hash(self._static())

    def step(self, key: jax.Array, state: EnvState, action: Action, params: EnvParams | None = None):
        """gymnax's step (auto-reset, terminated/truncated, info["final_observation"]), with the step's
        and the reset's random numbers drawn in one call: PRNG calls dominate a small step on CPU."""
        return self._step_auto_reset(key, state, action, self.default_params if params is None else params)

    def reset(self, key: jax.Array, params: EnvParams | None = None) -> tuple[Observation, EnvState]:
        return self._reset_jit(key, self.default_params if params is None else params)

    @partial(jax.jit, static_argnames=("self",))
    def _reset_jit(self, key, params):
        return self.reset_env(key, params)

    @partial(jax.jit, static_argnames=("self",))
    def _step_auto_reset(self, key, state, action, params):
        u = _uniforms(key, self.N_STEP_DRAWS + self.N_RESET_DRAWS)
        obs_st, state_st, reward, terminated, info = self._step(u[: self.N_STEP_DRAWS], state, action, params)
        truncated = self.is_truncated(state_st, params)
        done = terminated | truncated
        obs_re, state_re = self._reset(u[self.N_STEP_DRAWS:], params)
        state = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), state_re, state_st)
        obs = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), obs_re, obs_st)
        info = {**info, "terminated": terminated, "truncated": truncated, "final_observation": obs_st}
        return obs, state, reward, terminated, truncated, info

    def _reset(self, u: jax.Array, params: EnvParams) -> tuple[Observation, EnvState]:
        z = ndtri(u[:5])
        p, cl = params.channel, params.cloud
        log_bw = p.bw_log_mean + p.bw_log_std * z[0]
        regime = jnp.int32(0)
        trace_pos = u[5] * p.trace_bw.shape[0]
        if self.channel_kind == "gauss_markov":
            bw = jnp.exp(log_bw)
        elif self.channel_kind == "regime":
            log_bw = p.regime_log_mean[0] + p.regime_log_std[0] * z[0]
            bw = jnp.exp(log_bw)
        else:
            bw = ch.trace_bandwidth(p, trace_pos)
        bw = jnp.maximum(bw, p.bw_min)
        log_sigma_h = p.fade_log_mean + p.fade_log_std * z[1]
        prompt, output = self._draw_request(params.workload, u[6:9])
        cloud_pos = u[9] * cl.load_trace.shape[0]
        load, cloud_logit, _ = cloud.next_load(self.load_kind, cl, self._load_logit0(cl, z[4]), cloud_pos - 1.0, 0.0)
        state = EnvState(
            bw=bw, bw_est=bw * jnp.exp(p.bw_est_log_std * z[2]), log_bw=log_bw, regime=regime, trace_pos=trace_pos,
            rtt=ch.rtt_of(p, bw, 0.0), log_sigma_h=log_sigma_h, loss_p=ch.loss_probability(p.h_th, log_sigma_h),
            snr_db=p.snr_db_mean + p.snr_db_std * z[3], cloud_logit=cloud_logit, cloud_pos=cloud_pos, cloud_load=load,
            cloud_wait_est=cloud.expected_wait(cl, load),
            connected=jnp.float32(1.0), link=jnp.float32(1.0), backlog=jnp.float32(0.0), z_energy=jnp.float32(0.0),
            z_acc=jnp.float32(0.0), prompt_len=prompt, output_len=output, last_boundary=jnp.int32(0),
            last_fmt=jnp.int32(0), last_edge_frac=jnp.float32(0.0), time=jnp.int32(0),
            temp_c=heat.start_temp(params.heat, u[self._draw("heat")] if self.heat else None, self.heat),
            ctx_len=jnp.float32(0.0), kv_split=jnp.float32(0.0),
            **battery.start(params, u[self._draw("battery")] if self.battery else None, self.battery))
        return self.get_obs(state, params), state

    def _draw(self, what: str) -> int:
        """An optional section's reset draw: after the 10 of every env, heat's, then the battery's."""
        return SplitEnv.N_RESET_DRAWS + (int(self.heat) if what == "battery" else 0)

    def _channel(self, z, u, state: EnvState, params: EnvParams):
        """This slot's channel and cloud: what the agent did not know when it chose. Returns (Conditions,
        the updated latent channel fields of the state)."""
        cl = params.cloud
        load, cloud_logit, cloud_pos = cloud.next_load(self.load_kind, cl, state.cloud_logit, state.cloud_pos, z[5])
        cond, latent = link_conditions(self.channel_kind, params.channel, state, z, u, load,
                                       cloud.sample_wait(cl, load, u[6], u[7]), heat.edge_speed_of(params, state, self.heat),
                                       self.sessions, battery.edge_up_of(params, state, self.battery))
        return cond, latent | dict(cloud_logit=cloud_logit, cloud_pos=cloud_pos)

    def _step(self, draws: jax.Array, state: EnvState, action: Action, params: EnvParams):
        z, u = ndtri(draws[:8]), draws[8:]  # 8 normals by inverse CDF, 9 uniforms
        # a conversation's cache shrinks what fits: the masks at its context
        here = sessions.params_at(params, state) if self.sessions else params
        w, r = params.workload, params.reward
        cond, latent = self._channel(z, u, state, params)
        arrivals = self._poisson(w.arrival_rate * params.slot_s, u[1])
        b, fmt, edge_units, m, q = price_slot(here, state, action, cond, jnp.stack([u[8], u[4], z[7]]), arrivals)
        request = self._draw_request(w, u[2:5])
        session = sessions.next_session(params, state, b, edge_units, request, u[9] if self.sessions else None, self.sessions)
        new = advance_state(params, state, cond, q, b, fmt, edge_units, request, z[6], latent,
                            heat.temp_after(params, state, q, self.heat), session)
        info = slot_info(m, q, cond, arrivals, b, fmt, edge_units, state.temp_c)
        return self.get_obs(new, params), new, -r.scale * q["objective"], jnp.bool_(False), info

    def _load_logit0(self, cl, z):
        return _logit(cl.load_mean) + cl.load_std * z

    def _draw_request(self, w, u3):
        k = jnp.minimum(jnp.sum(u3[0] > jnp.cumsum(w.class_probs)), w.class_probs.shape[0] - 1)
        prompt = jnp.round(w.prompt_lo[k] + u3[1] * (w.prompt_hi[k] - w.prompt_lo[k]))
        output = jnp.round(w.output_lo[k] + u3[2] * (w.output_hi[k] - w.output_lo[k]))
        return prompt, output

    def _poisson(self, rate, u):
        return poisson_icdf(rate, u, self.max_arrivals)

    def get_obs(self, state: EnvState, params: EnvParams, key=None) -> Observation:
        shift, scale = F.normalisers(params, self.n_layers, jnp, self.features)
        c = (sessions.params_at(params, state) if self.sessions else params).costs
        return Observation(features=F.evaluate(self.features, shift, scale, self.raw_features(state, params), jnp),
                           boundary_mask=c.boundary_mask, format_mask=jnp.ones(self.num_formats, dtype=bool),
                           unit_mask=c.unit_mask)

    def raw_features(self, state: EnvState, params: EnvParams) -> dict[str, jax.Array]:
        """The raw quantities of the observation contract (`F.sources(self.features)`) in this state."""
        raw = {name: getattr(state, name) for name in F.sources(self.features) if name != "arrivals_per_slot"}
        return raw | {"arrivals_per_slot": params.workload.arrival_rate * params.slot_s}

    def is_terminated(self, state: EnvState, params: EnvParams) -> jax.Array:
        return jnp.bool_(False)

    # ---- spaces -----------------------------------------------------------------------------
    def action_space(self, params: EnvParams | None = None) -> spaces.Dict:
        return spaces.Dict({"boundary": spaces.Discrete(self.num_boundaries), "fmt": spaces.Discrete(self.num_formats),
                            "units": spaces.Box(0, 1, (self.n_units,), jnp.int32)})

    def observation_space(self, params: EnvParams | None = None) -> spaces.Dict:
        return spaces.Dict({
            "features": spaces.Box(-F.FEATURE_BOUND, F.FEATURE_BOUND, (self.obs_dim,), jnp.float32),
            "boundary_mask": spaces.Box(0, 1, (self.num_boundaries,), jnp.bool_),
            "format_mask": spaces.Box(0, 1, (self.num_formats,), jnp.bool_),
            "unit_mask": spaces.Box(0, 1, (self.num_boundaries, self.n_units), jnp.bool_)})
