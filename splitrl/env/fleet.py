"""FleetEnv: N edge devices share one cloud of C replicas (gymnax-style, pure JAX). The model and its
sources are in docs/fleet.md; in brief, per slot t of length `slot_s`:

  each device i prices its request and moves its own queues exactly as SplitEnv does (`price_slot`),
  with its own channel (independent, or mixed with its cell's draws) and the cloud conditions
      cloud_wait = W_t / C          (the FIFO work ahead of a request arriving now)
      cloud_load = ρ_{t−1}          (the utilisation the load balancer published, one slot old)
  and observes both as published after the last slot (features `cloud_load` and `cloud_wait`);
  the cloud receives the work the devices offloaded and the background's, and serves C · slot_s:
      a_i  = served_i · (cloud prefill s + cloud decode s / min(slots, B*))
      A_t  = Σ_i a_i + background_t
      W_{t+1} = max(W_t + A_t − C · slot_s, 0),     ρ_t = min((W_t + A_t) / (C · slot_s), 1)
  reward r_i = −scale · [V · penalty_i + ΔL_i + ΔL_cloud / N],  L_cloud = ½ (W / (C · wait_ref_s))²,
  so Σ_i r_i = −scale · (the fleet's drift-plus-penalty). With a congestion toll κ (`cloud.toll`, 0 by
  default) r_i is also charged −scale · κ · (W_t · a_i + a_i² / 2) / (C · wait_ref_s)²: the price of the
  drift its own work adds (reward shaping; `objective` and `fleet_objective` never include it).

Observations, actions and per-device info have a leading device axis [N] and SplitEnv's structure (the
same networks and the same ONNX export apply per device). The fleet-level info fields are scalars.
Arrivals and request lengths replay a trace (`workload_kind="trace"`) or use each device scenario's
Poisson request classes (`"classes"`); the background always replays the trace.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from gymnax.environments import environment, spaces
from jax.scipy.special import ndtr, ndtri

from splitrl.env import heat
from splitrl.env.slot import _uniforms, advance_state, link_conditions, poisson_icdf, price_slot, slot_info
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import Action, CloudState, FleetParams, FleetState, Observation

WORKLOAD_KINDS = ("trace", "classes")
# info fields of the whole fleet (scalars per env); every other info field is per device ([N])
FLEET_INFO = ("cloud_queue_s", "cloud_util", "offloaded_work", "background_work", "cloud_drift", "fleet_objective")
# the draws a device shares with its cell (Gaussian copula): in a step the bandwidth, RTT, fading and SNR
# normals and the regime and link uniforms (SplitEnv._step's layout); at reset the bandwidth, fading, SNR
STEP_SHARED = (0, 1, 2, 3, 8, 13)
RESET_SHARED = (0, 1, 3)


def cloud_lyapunov(params: FleetParams, work) -> jax.Array:
    """L_cloud(W) = ½ (W / W_ref)², W_ref = C · wait_ref_s: the queue at which a new request waits wait_ref_s."""
    return 0.5 * (work / (params.cloud.replicas * params.cloud.wait_ref_s)) ** 2


def congestion_charge(coef, queue, work, ref) -> jax.Array:
    """`coef` x the drift of L_cloud = ½ (W / W_ref)² that offloaded work `a` adds at the queue `W`:
    coef · (W·a + a²/2) / W_ref². The toll (`cloud.toll`), congestion DPP (`fleet_myopic_action`) and the
    fleet oracle all charge this."""
    return coef * (queue * work + 0.5 * work ** 2) / ref ** 2


def serve_cloud(params: FleetParams, work, offloaded, background) -> dict:
    """One slot of the shared cloud: C replicas serve C · slot_s replica-seconds of the FIFO queue."""
    capacity = params.cloud.replicas * params.slot_s
    total = work + offloaded + background
    nxt = jnp.maximum(total - capacity, 0.0)
    return {"work": nxt, "util": jnp.minimum(total / capacity, 1.0),
            "drift": cloud_lyapunov(params, nxt) - cloud_lyapunov(params, work)}


class FleetEnv(environment.Environment[FleetState, FleetParams]):
    """Static structure only (the device env's, N, cells, workload kind); numbers live in FleetParams."""

    def __init__(self, device: SplitEnv, n_devices: int, n_cells: int = 1, workload_kind: str = "trace",
                 default_params: FleetParams | None = None, fleet_id: str = "custom"):
        if workload_kind not in WORKLOAD_KINDS:
            raise ValueError(f"workload kind {workload_kind!r} is unknown; choose one of {WORKLOAD_KINDS}")
        if not 1 <= n_cells <= n_devices:
            raise ValueError(f"n_cells = {n_cells}: must lie in [1, n_devices = {n_devices}]")
        self.device, self.n_devices, self.n_cells, self.workload_kind = device, n_devices, n_cells, workload_kind
        self.fleet_id = fleet_id
        self._default_params = default_params

    # ---- static structure ---------------------------------------------------------------------
    def _static(self) -> tuple:
        return (type(self), self.device._static(), self.n_devices, self.n_cells, self.workload_kind)

    def __eq__(self, other) -> bool:
        return isinstance(other, FleetEnv) and self._static() == other._static()

    def __hash__(self) -> int:
        return hash(self._static())

    @property
    def default_params(self) -> FleetParams:
        if self._default_params is None:
            raise ValueError("this FleetEnv was built without default params: pass params, or build it with make_fleet")
        return self._default_params

    @property
    def name(self) -> str:
        return f"FleetEnv[{self.fleet_id}]"

    @property
    def num_actions(self) -> int:
        return self.device.num_actions

    n_layers = property(lambda self: self.device.n_layers)
    n_units = property(lambda self: self.device.n_units)
    num_boundaries = property(lambda self: self.device.num_boundaries)
    num_formats = property(lambda self: self.device.num_formats)
    num_units = property(lambda self: self.device.num_units)   # sizes the shared policy (make_policy)
    obs_dim = property(lambda self: self.device.obs_dim)

    # ---- random numbers: one call per step ------------------------------------------------------
    def _n_step_draws(self) -> int:
        return self.n_devices * self.device.N_STEP_DRAWS + self.n_cells * len(STEP_SHARED) + 1

    def _n_reset_draws(self) -> int:
        return self.n_devices * self.device.N_RESET_DRAWS + self.n_cells * len(RESET_SHARED) + 1

    def _share(self, dev_u, cell_u, params: FleetParams, idx: tuple[int, ...]):
        """Devices' uniforms [N, D] with the columns `idx` mixed with their cell's (Gaussian copula of
        correlation channel_corr; each marginal stays uniform, and exactly the device's own at 0)."""
        rho = params.channel_corr
        own = ndtri(dev_u[:, idx])
        mixed = ndtr(jnp.sqrt(rho) * ndtri(cell_u[params.cell]) + jnp.sqrt(1.0 - rho) * own)
        mixed = jnp.clip(mixed, 1e-7, 1.0 - 1e-7)
        return dev_u.at[:, idx].set(jnp.where(rho > 0, mixed, dev_u[:, idx]))

    def _split_draws(self, u, per_device: int, shared: tuple[int, ...]):
        n, c = self.n_devices * per_device, self.n_cells * len(shared)
        return u[:n].reshape(self.n_devices, per_device), u[n:n + c].reshape(self.n_cells, len(shared)), u[n + c]

    # ---- the workload -----------------------------------------------------------------------------
    def _minute(self, params: FleetParams, cloud: CloudState, time):
        seconds = cloud.start_s + time.astype(jnp.float32) * params.slot_s
        return jnp.floor(seconds / 60.0).astype(jnp.int32) % params.trace.rate_shape.shape[0]

    def _trace_request(self, params: FleetParams, minute, u):
        """The lengths of a request drawn uniformly from the minute's requests of the trace."""
        tr = params.trace
        k = tr.first[minute] + jnp.minimum(jnp.floor(u * tr.count[minute]).astype(jnp.int32), tr.count[minute] - 1)
        return tr.prompt[k], tr.output[k]

    def _background(self, params: FleetParams, minute, u):
        """The background's work this slot: Poisson(λ_bg · shape · slot_s) requests in a normal approximation,
        each the minute's mean background request on the cloud."""
        n = params.cloud.bg_rate * params.trace.rate_shape[minute] * params.slot_s
        count = jnp.maximum(n + jnp.sqrt(n) * ndtri(u), 0.0)
        return count * params.cloud.bg_work[minute]

    # ---- dynamics ---------------------------------------------------------------------------------
    def reset_env(self, key: jax.Array, params: FleetParams) -> tuple[Observation, FleetState]:
        return self._reset(_uniforms(key, self._n_reset_draws()), params)

    def step_env(self, key: jax.Array, state: FleetState, action: Action, params: FleetParams):
        return self._step(_uniforms(key, self._n_step_draws()), state, action, params)

    def _reset(self, u, params: FleetParams) -> tuple[Observation, FleetState]:
        dev_u, cell_u, u_start = self._split_draws(u, self.device.N_RESET_DRAWS, RESET_SHARED)
        dev_u = self._share(dev_u, cell_u, params, RESET_SHARED)
        _, dev = jax.vmap(self.device._reset)(dev_u, params.device)
        start_s = u_start * params.trace.rate_shape.shape[0] * 60.0
        cloud = CloudState(work=jnp.float32(0.0), util=jnp.float32(0.0), start_s=start_s)
        minute = self._minute(params, cloud, jnp.int32(0))
        # what the load balancer publishes before the first slot: the background's expected utilisation
        bg = params.cloud.bg_rate * params.trace.rate_shape[minute] * params.cloud.bg_work[minute]
        cloud = cloud.replace(util=jnp.minimum(bg / params.cloud.replicas, 1.0))
        dev = dev.replace(cloud_load=jnp.full(self.n_devices, cloud.util), cloud_wait_est=jnp.zeros(self.n_devices))
        if self.workload_kind == "trace":
            prompt, output = jax.vmap(self._trace_request, (None, None, 0))(params, minute, dev_u[:, 6])
            dev = dev.replace(prompt_len=prompt, output_len=output)
        state = FleetState(device=dev, cloud=cloud, time=jnp.int32(0))
        return self.get_obs(state, params), state

    def _device_truth(self, params: FleetParams, u, dev_state, dev_params, minute, next_minute, wait) -> dict:
        """One device's slot as the step draws it from its (cell-shared) uniforms, before any action: its
        true link conditions `cond` (with the cloud wait W_t / C), the latent link fields, its `arrivals`,
        the retransmission draws `arq`, the next `request` (prompt, output) and the bandwidth estimate's
        normal `z_est`."""
        z, uu = ndtri(u[:8]), u[8:]
        cond, latent = link_conditions(self.device.channel_kind, dev_params.channel, dev_state, z, uu,
                                       dev_state.cloud_load, wait, heat.edge_speed_of(dev_params, dev_state, self.device.heat))
        rate = dev_params.workload.arrival_rate
        if self.workload_kind == "trace":
            rate = rate * params.trace.rate_shape[minute]
            request = self._trace_request(params, next_minute, uu[2])
        else:
            request = self.device._draw_request(dev_params.workload, uu[2:5])
        arrivals = poisson_icdf(rate * params.slot_s, uu[1], self.device.max_arrivals)
        return {"cond": cond, "latent": latent, "arrivals": arrivals, "arq": jnp.stack([uu[8], uu[4], z[7]]),
                "request": request, "z_est": z[6]}

    def _truth(self, u, state: FleetState, params: FleetParams):
        """Every device's `_device_truth` ([N] leading) from the step's uniforms, the background's uniform
        and the slot's minute."""
        dev_u, cell_u, u_bg = self._split_draws(u, self.device.N_STEP_DRAWS, STEP_SHARED)
        dev_u = self._share(dev_u, cell_u, params, STEP_SHARED)
        minute = self._minute(params, state.cloud, state.time)
        next_minute = self._minute(params, state.cloud, state.time + 1)
        wait = state.cloud.work / params.cloud.replicas
        truth = jax.vmap(self._device_truth, (None, 0, 0, 0, None, None, None))(
            params, dev_u, state.device, params.device, minute, next_minute, wait)
        return truth, u_bg, minute

    def slot_truth(self, key: jax.Array, state: FleetState, params: FleetParams) -> dict:
        """What `step_env(key, state, ·, params)` will draw for every device ([N] leading), whatever the
        actions: READS THE FUTURE (the full-information oracle, splitrl.baselines.dpp.FleetOracle, only)."""
        return self._truth(_uniforms(key, self._n_step_draws()), state, params)[0]

    def device_cost(self, params: FleetParams, truth: dict, dev_state, action, dev_params):
        """One device's slot priced under `action` in its `truth` (`_device_truth`): (boundary, format, edge
        units, metrics, queues `slot_queues`, the cloud work it offloads). Its own objective q["objective"]
        does not depend on the other devices' actions: they meet the same wait W_t / C."""
        b, fmt, edge_units, m, q = price_slot(dev_params, dev_state, action, truth["cond"], truth["arq"],
                                              truth["arrivals"])
        work = q["served"] * (m["cloud_prefill_s"] + m["cloud_decode_s"] / params.cloud.batch_gain)
        return b, fmt, edge_units, m, q, work

    def _device_step(self, params: FleetParams, truth: dict, dev_state, action, dev_params):
        """One device's slot (SplitEnv's pricing and queues) under the fleet's cloud conditions and workload."""
        cond = truth["cond"]
        b, fmt, edge_units, m, q, work = self.device_cost(params, truth, dev_state, action, dev_params)
        new = advance_state(dev_params, dev_state, cond, q, b, fmt, edge_units, truth["request"], truth["z_est"],
                            truth["latent"], heat.temp_after(dev_params, dev_state, q, self.device.heat))
        return new, slot_info(m, q, cond, truth["arrivals"], b, fmt, edge_units, dev_state.temp_c) | {"cloud_work": work}

    def _step(self, u, state: FleetState, action: Action, params: FleetParams):
        truth, u_bg, minute = self._truth(u, state, params)
        dev, info = jax.vmap(self._device_step, (None, 0, 0, 0, 0))(params, truth, state.device, action, params.device)
        offloaded, background = jnp.sum(info["cloud_work"]), self._background(params, minute, u_bg)
        cl = serve_cloud(params, state.cloud.work, offloaded, background)
        objective = info["objective"] + cl["drift"] / self.n_devices
        # what the load balancer publishes after the slot: its utilisation and the wait W_{t+1} / C that
        # every request of the next slot will meet (FIFO)
        dev = dev.replace(cloud_load=jnp.full(self.n_devices, cl["util"]),
                          cloud_wait_est=jnp.full(self.n_devices, cl["work"] / params.cloud.replicas))
        new = FleetState(device=dev, cloud=state.cloud.replace(work=cl["work"], util=cl["util"]), time=state.time + 1)
        info = info | {"objective": objective, "cloud_queue_s": cl["work"], "cloud_util": cl["util"],
                       "offloaded_work": offloaded, "background_work": background, "cloud_drift": cl["drift"],
                       "fleet_objective": jnp.sum(objective)}
        # a congestion toll (reward shaping; the objective and its sum stay the fleet's drift-plus-penalty):
        # each device is also charged `toll` x the drift of L_cloud its own offloaded work adds at W_t
        ref = params.cloud.replicas * params.cloud.wait_ref_s
        toll = congestion_charge(params.cloud.toll, state.cloud.work, info["cloud_work"], ref)
        reward = -params.device.reward.scale * (objective + toll)
        return self.get_obs(new, params), new, reward, jnp.zeros(self.n_devices, bool), info

    def step(self, key: jax.Array, state: FleetState, action: Action, params: FleetParams | None = None):
        """gymnax's step with auto-reset (the whole fleet resets at the time limit); terminated and
        truncated are [N] (equal across devices) so a batch of envs × devices broadcasts."""
        return self._step_auto_reset(key, state, action, self.default_params if params is None else params)

    def reset(self, key: jax.Array, params: FleetParams | None = None) -> tuple[Observation, FleetState]:
        return self._reset_jit(key, self.default_params if params is None else params)

    @partial(jax.jit, static_argnames=("self",))
    def _reset_jit(self, key, params):
        return self.reset_env(key, params)

    @partial(jax.jit, static_argnames=("self",))
    def _step_auto_reset(self, key, state, action, params):
        n = self._n_step_draws()
        u = _uniforms(key, n + self._n_reset_draws())
        obs_st, state_st, reward, terminated, info = self._step(u[:n], state, action, params)
        truncated = jnp.full(self.n_devices, self.is_truncated(state_st, params))
        done = jnp.any(terminated | truncated)
        obs_re, state_re = self._reset(u[n:], params)
        state = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), state_re, state_st)
        obs = jax.tree.map(lambda r, s: jax.lax.select(done, r, s), obs_re, obs_st)
        info = {**info, "terminated": terminated, "truncated": truncated, "final_observation": obs_st}
        return obs, state, reward, terminated, truncated, info

    def is_truncated(self, state: FleetState, params: FleetParams) -> jax.Array:
        return state.time >= params.max_steps_in_episode

    def is_terminal(self, state: FleetState, params: FleetParams) -> jax.Array:
        return self.is_truncated(state, params)

    def get_obs(self, state: FleetState, params: FleetParams, key=None) -> Observation:
        """Each device's SplitEnv observation (its `cloud_load` and `cloud_wait` features are the published
        utilisation and wait W / C)."""
        return jax.vmap(self.device.get_obs)(state.device, params.device)

    # ---- spaces (per device; a batch adds the leading [N]) ------------------------------------------
    def action_space(self, params: FleetParams | None = None) -> spaces.Dict:
        return self.device.action_space()

    def observation_space(self, params: FleetParams | None = None) -> spaces.Dict:
        return self.device.observation_space()


def fixed_action(env: FleetEnv, boundary: int, fmt: int = 0, edge_units: bool = False) -> Action:
    """The same placement on every device ([N] leading axis): boundary b, format, the units of layer b
    all on the edge (`edge_units`) or all on the cloud. Cloud-only is (0, 0, False), edge-only (L, 0, True)."""
    n, u = env.n_devices, env.n_units
    return Action(boundary=jnp.full(n, boundary, jnp.int32), fmt=jnp.full(n, fmt, jnp.int32),
                  units=jnp.full((n, u), int(edge_units), jnp.int32))


def start(env: FleetEnv, params: FleetParams, reset_keys: jax.Array):
    """`splitrl.env.rollout.start` for a fleet: the episode returns are per device, [envs, N]."""
    from splitrl.env.rollout import Carry
    obs, state = jax.vmap(env.reset, (0, None))(reset_keys, params)
    return Carry(obs=obs, state=state, episode_return=jnp.zeros((reset_keys.shape[0], env.n_devices), jnp.float32))
