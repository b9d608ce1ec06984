"""One-slot controllers: greedy latency and myopic drift-plus-penalty at the bandwidth estimate, and
the full-information DPP oracle (an upper reference that reads the slot's true channel)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from splitrl.baselines.base import PolicyBase
from splitrl.env import battery, sessions
from splitrl.env.dpp import candidate_actions, candidate_costs, fleet_myopic_action, myopic_action, pick
from splitrl.env.fleet import congestion_charge
from splitrl.env.slot import estimated_conditions
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import Action


@dataclasses.dataclass(frozen=True)
class GreedyLatency(PolicyBase):
    """Myopic: the placement with the lowest expected latency for this slot's request at the
    bandwidth *estimate* (and last slot's RTT, loss, SNR, cloud load), over the count-canonical
    candidates. Ignores energy, accuracy and queues."""
    name: str = "greedy_latency"

    def init(self, env, env_params, spec=None, key=None):
        return candidate_actions(env, env_params, exhaustive=False)

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        env_params = sessions.params_at(env_params, state)   # the masks at a conversation's context
        m = candidate_costs(env_params, pparams, state.prompt_len, state.output_len, estimated_conditions(state, env_params))
        return pick(pparams, jnp.argmin(m["latency"]))


@dataclasses.dataclass(frozen=True)
class MyopicDPP(PolicyBase):
    """Myopic drift-plus-penalty at the *estimate*: minimises the env's one-slot objective (penalty +
    queue and virtual-queue drift) with the bandwidth estimate, last slot's RTT/loss/SNR/load and the
    expected arrivals in place of the slot's unknown truth. The causal twin of the oracle (Neely's
    classic DPP controller); over the count-canonical candidates."""
    name: str = "myopic_dpp"

    def init(self, env, env_params, spec=None, key=None):
        return candidate_actions(env, env_params, exhaustive=False)

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return myopic_action(env_params, state, pparams)


@dataclasses.dataclass(frozen=True)
class HeatDPP(MyopicDPP):
    """Myopic DPP that reads the edge `margin_c` K hotter than it is, so it gives up edge work before the
    heat that work adds throttles the edge: a heat-aware one-slot rule, the hand-written anticipation a
    learned policy should at least match (docs/evaluation.md, "A phone in a warm metro carriage"). It does
    not look ahead; the margin is the price of heat that its one-slot objective cannot give, so
    `splitrl-eval` chooses it on training episodes (`heat_dpp_margins`). Without heat it is myopic DPP.
    Params: {"candidates": the candidate set, "margin": K} (data: tuning compiles once)."""
    margin_c: float = 0.0
    name: str = "heat_dpp"

    def init(self, env, env_params, spec=None, key=None):
        return {"candidates": candidate_actions(env, env_params, exhaustive=False), "margin": jnp.float32(self.margin_c)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return myopic_action(env_params, state.replace(temp_c=state.temp_c + pparams["margin"]), pparams["candidates"])


@dataclasses.dataclass(frozen=True)
class BatteryDPP(MyopicDPP):
    """Myopic DPP that keeps a reserve of charge: once the charge left above the floor, spread over the
    slots left, is below `reserve_j` J a slot, it plays cloud-only (a request that meets a dropout still
    falls back to the phone, which is what the reserve is for). The battery queue Z_B prices the charge
    only once spending runs behind the even spend-down to the floor (by Z_B·E_ref joules), so myopic DPP
    reaches the floor before the episode ends, and where the charge is short Z_B saturates at z_max and
    stops pricing it (docs/evaluation.md, "A phone in its last percent"). The reserve is the hand-written
    anticipation a learned policy should at least match; it does not look ahead, and `splitrl-eval`
    chooses it on training episodes (`battery_dpp_reserves_j`). Reserve 0 is myopic DPP, and so is it
    without a battery.
    Params: {"candidates": the candidate set, "reserve_j": J a slot} (data: tuning compiles once)."""
    reserve_j: float = 0.0
    name: str = "battery_dpp"

    def init(self, env, env_params, spec=None, key=None):
        return {"candidates": candidate_actions(env, env_params, exhaustive=False),
                "reserve_j": jnp.float32(self.reserve_j)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        slots_left = jnp.maximum(env_params.max_steps_in_episode - state.time, 1).astype(jnp.float32)
        short = battery.spend_down_j(env_params, state.soc, slots_left) < pparams["reserve_j"]
        a = myopic_action(env_params, state, pparams["candidates"])
        return Action(boundary=jnp.where(short, 0, a.boundary), fmt=jnp.where(short, 0, a.fmt),
                      units=jnp.where(short, 0, a.units))


@dataclasses.dataclass(frozen=True)
class FleetDPP(MyopicDPP):
    """Myopic DPP on the fleet's Lyapunov function (a fleet's devices only): also charges the drift its
    offloaded work adds to the shared cloud's queue at the published wait (`fleet_myopic_action`), where
    plain myopic DPP sees the cloud only through the wait its own request meets; `congestion` multiplies
    that charge (1: the drift; `congestion_dpp` tunes it on training episodes). The fleet's numbers
    (replicas C, wait_ref_s, batch gain) come from the fleet (splitrl.evaluation.fleet builds it).
    Params: {"candidates": the candidate set, "congestion": the multiplier} (data: tuning compiles once)."""
    replicas: float = 1.0
    wait_ref_s: float = 10.0
    batch_gain: float = 1.0
    congestion: float = 1.0
    name: str = "fleet_dpp"

    def init(self, env, env_params, spec=None, key=None):
        return self.with_candidates(candidate_actions(env, env_params, exhaustive=False))

    def with_candidates(self, candidates: Action) -> dict:
        return {"candidates": candidates, "congestion": jnp.float32(self.congestion)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return fleet_myopic_action(env_params, state, pparams["candidates"], self.replicas, self.wait_ref_s,
                                   self.batch_gain, pparams["congestion"])


@dataclasses.dataclass(frozen=True)
class Oracle(PolicyBase):
    """FULL-INFORMATION MYOPIC DPP ORACLE: an upper reference, not a deployable policy. It READS THE
    FUTURE: for every count-canonical candidate it runs `env.step_env(step_key, state, a)` with the
    very key and state the env will step with, so it sees the slot's true bandwidth, RTT, fading,
    cloud load and arrivals, and picks the minimum `info["objective"]`. Exact per slot over the whole
    structured space when same-kind units cost the same (see the module docstring); over an
    episode it can lose (it is myopic: it ignores what its choice does to the queues later)."""
    env: SplitEnv = None
    name: str = "oracle_dpp"

    def bind(self, env, env_params):
        return dataclasses.replace(self, env=env)

    def init(self, env, env_params, spec=None, key=None):
        return candidate_actions(env, env_params)

    def objectives(self, actions: Action, state, env_params, step_key) -> jax.Array:
        """The one-slot objective of each action, stepped from the same state with the same key."""
        return jax.vmap(lambda a: self.env.step_env(step_key, state, a, env_params)[4]["objective"])(actions)

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return pick(pparams, jnp.argmin(self.objectives(pparams, state, env_params, step_key)))



@dataclasses.dataclass(frozen=True)
class LookaheadOracle(PolicyBase):
    """FULL-INFORMATION MODEL-PREDICTIVE CONTROL: an upper reference that READS THE NEXT `horizon` SLOTS.
    Every sequence of `horizon` placements from a small candidate set (cloud-only, edge-only where it
    fits, and layer splits at evenly spaced allowed boundaries, fp16; `width` in all) is stepped through
    the env with the very keys the env will use, from the very state; the first placement of the
    sequence of least total objective is played, then the search repeats next slot (receding horizon).
    Exact over that set and horizon: width^horizon sequences a slot (512 by default). Unlike the one-slot
    oracle it sees what a choice does to the next slots (heat, a conversation's cache, the battery,
    the queues); unlike a learned policy it searches a coarse set and a short horizon."""
    env: SplitEnv = None
    horizon: int = 3
    width: int = 8
    name: str = "mpc_oracle"

    @property
    def lookahead(self) -> int:
        return self.horizon

    def bind(self, env, env_params):
        return dataclasses.replace(self, env=env)

    def init(self, env, env_params, spec=None, key=None):
        allowed = np.flatnonzero(np.asarray(env_params.costs.boundary_mask))
        inner = allowed[(allowed > 0) & (allowed < env.n_layers)]
        picks = [0] + ([env.n_layers] if env.n_layers in allowed else [])
        k = self.width - len(picks)
        if k > 0 and inner.size:
            picks += sorted(set(inner[np.linspace(0, inner.size - 1, min(k, inner.size)).round().astype(int)].tolist()))
        b = np.asarray(picks, np.int32)
        seqs = np.stack(np.meshgrid(*[np.arange(b.size)] * self.horizon, indexing="ij"), -1).reshape(-1, self.horizon)
        return {"actions": Action(boundary=jnp.asarray(b), fmt=jnp.zeros(b.size, jnp.int32),
                                  units=jnp.zeros((b.size, env.n_units), jnp.int32)),
                "sequences": jnp.asarray(seqs, jnp.int32)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        actions, seqs = pparams["actions"], pparams["sequences"]
        T = env_params.max_steps_in_episode

        def total(seq):
            def one(s, i):
                s_next, cost = s
                _, s_new, _, _, info = self.env.step_env(step_key[i], s_next, pick(actions, seq[i]), env_params)
                return (s_new, cost + jnp.where(s_next.time < T, info["objective"], 0.0)), None
            return jax.lax.scan(one, (state, jnp.float32(0.0)), jnp.arange(self.horizon))[0][1]

        return pick(actions, seqs[jnp.argmin(jax.vmap(total)(seqs)), 0])


@dataclasses.dataclass(frozen=True)
class FleetOracle(FleetDPP):
    """FULL-INFORMATION ONE-SLOT FLEET ORACLE: an upper reference, not a deployable policy. It READS THE
    FUTURE: from the env's very step key and state (`FleetEnv.slot_truth`) it takes each device's true
    link conditions, retransmission draws and arrivals of the slot (after the cell sharing), prices every
    candidate in them with the env's own pricing (`FleetEnv.device_cost`) and plays, per device, the
    candidate of least own one-slot objective + κ · (W·a + a²/2) / W_ref², `fleet_myopic_action`'s
    congestion charge at the true queue W = W_t (a: the device's offloaded cloud work, κ: `congestion`,
    tuned on training episodes like congestion_dpp's; κ = 0 is the plain full-information myopic oracle).

    Exact per device and slot: every device meets the cloud wait W_t / C of the slot's start, so a
    device's own objective does not depend on the others' actions in that slot (only the shared drift and
    the future do). It is not the fleet's joint optimum (the drift of the others' work is charged at W_t,
    not at what they choose) nor an optimum over time (it is myopic). A fleet-level policy: it acts on the
    whole fleet's state with the env's key (`fleet_action`), never per device; params as FleetDPP's."""
    name: str = "fleet_oracle"

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        raise TypeError("fleet_oracle acts on the whole fleet: call fleet_action(env, pparams, state, params, env_key)")

    def objectives(self, env, pparams, state, params, env_key) -> tuple[jax.Array, jax.Array]:
        """(each device's own one-slot objective, its congestion charge at κ = 1), both [N, K] over its
        candidates `pparams["candidates"]` ([N, K] leading), in the slot `env.step_env(env_key, state, ·)`
        will draw."""
        truth = env.slot_truth(env_key, state, params)

        def device(t, s, p, cands):
            def one(a):
                *_, q, work = env.device_cost(params, t, s, a, p)
                return q["objective"], work
            return jax.vmap(one)(cands)

        own, work = jax.vmap(device)(truth, state.device, params.device, pparams["candidates"])
        ref = params.cloud.replicas * params.cloud.wait_ref_s
        return own, congestion_charge(1.0, state.cloud.work, work, ref)

    def fleet_action(self, env, pparams, state, params, env_key) -> Action:
        """Every device's choice ([N] leading) in one fleet's `state` (no env batch axis)."""
        own, charge = self.objectives(env, pparams, state, params, env_key)
        best = jnp.argmin(own + pparams["congestion"][:, None] * charge, axis=1)
        return jax.vmap(pick)(pparams["candidates"], best)
