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
from jax.scipy.special import ndtri

from splitrl.env import battery, cloud, heat, sessions
from splitrl.env import channel as ch
from splitrl.env import features as F
from splitrl.env.fuse import materialise
from splitrl.env.slot import _uniforms, advance_state, link_conditions, poisson_icdf, price_slot, slot_info
from splitrl.env.tables import edge_cloud_ratio
from splitrl.env.types import Action, EnvParams, EnvState, Observation
from splitrl.profiles.formats import TX_FORMATS


def _logit(x):
    return jnp.log(x) - jnp.log1p(-x)


class SplitEnv(environment.Environment[EnvState, EnvParams]):
    """Static structure only (layers, units, channel kind, table sizes); numbers live in EnvParams."""

    def __init__(self, n_layers: int, n_units: int, channel_kind: str, max_arrivals: int = 64,
                 default_params: EnvParams | None = None, scenario_id: str = "custom", load_kind: str = "ar1",
                 heat: bool = False, sessions: bool = False, battery: bool = False, device_feature: bool = False):
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
        # one policy for devices of several kinds (a fleet): each observes how slow it is
        self.device_feature = device_feature
        self.features = F.contract(heat, sessions, battery, device_feature)
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
                self.heat, self.sessions, self.battery, self.device_feature)

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
        state_st, reward, info = self._step_state(u[: self.N_STEP_DRAWS], state, action, params)
        terminated = jnp.bool_(False)
        truncated = self.is_truncated(state_st, params)
        done = terminated | truncated
        state_re = self._reset_state(u[self.N_STEP_DRAWS:], params)
        state = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), state_re, state_st)
        # the observation is a function of the state: observe the state that goes on (one get_obs, not
        # two and a select); the final observation only where a consumer reads it
        info = {**info, "terminated": terminated, "truncated": truncated,
                "final_observation": self.get_obs(state_st, params)}
        return self.get_obs(state, params), state, reward, terminated, truncated, info

    def _reset(self, u: jax.Array, params: EnvParams) -> tuple[Observation, EnvState]:
        state = self._reset_state(u, params)
        return self.get_obs(state, params), state

    def _reset_state(self, u: jax.Array, params: EnvParams) -> EnvState:
        z = materialise(ndtri(u[:5]))
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
        return state

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
        new, reward, info = self._step_state(draws, state, action, params)
        return self.get_obs(new, params), new, reward, jnp.bool_(False), info

    def _step_state(self, draws: jax.Array, state: EnvState, action: Action, params: EnvParams):
        """(the state after the slot, reward, info): `_step` without the observation."""
        z, u = materialise(ndtri(draws[:8])), draws[8:]  # 8 normals by inverse CDF, 9 uniforms
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
        return new, -r.scale * q["objective"], info

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
        from_params = ("arrivals_per_slot", "edge_cloud_ratio")
        raw = {name: getattr(state, name) for name in F.sources(self.features) if name not in from_params}
        raw["arrivals_per_slot"] = params.workload.arrival_rate * params.slot_s
        if self.device_feature:
            raw["edge_cloud_ratio"] = edge_cloud_ratio(params.costs)
        return raw

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
