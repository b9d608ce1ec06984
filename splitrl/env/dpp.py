"""The one-slot drift-plus-penalty controller's pieces, in the env's own model: the candidate placements
it searches, their costs in given conditions, and the env's one-slot objective. The myopic DPP baseline
(splitrl/baselines/dpp.py) and the DPP-guided learner (splitrl/agents/ppo.py) both use them.

Candidate placements. Several baselines search the structured action space (L+1) x 3 x 2^U, which
is too big for U = 16 units. Within the boundary layer, units of one kind (attention head groups,
FFN chunks) have identical cost entries in the analytic tables, ΔPPL depends only on the share of
units on the edge, and the memory mask allows a *prefix* of units (table order). So a placement with
n_a attention and n_f FFN units on the edge costs exactly what the **count-canonical** placement
(the first n_a attention and the first n_f FFN units) costs, and if the former is allowed so is the
latter. Enumerating (b, fmt, n_a in 0..A, n_f in 0..C) over allowed boundaries is therefore exact
over the whole space whenever same-kind units cost the same (tests/test_baselines.py checks it
against all 2^U unit subsets on an analytic scenario). Measured tables differ slightly unit to unit:
there, with U <= 8 units (the default), the candidates are every unit subset (exact by
enumeration); with more units, count-canonical placements only (near-exact).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from splitrl.env import sessions
from splitrl.env.cost import action_cost
from splitrl.env.fleet import congestion_charge
from splitrl.env.slot import estimated_conditions, slot_penalty, slot_queues
from splitrl.env.split_env import SplitEnv
from splitrl.env.tables import decode_layer_row
from splitrl.env.types import Action, Conditions, EnvParams, EnvState


def units_identical(env_params: EnvParams, rtol: float = 1e-6) -> bool:
    """Whether every unit of one kind (attention / FFN) in a layer has the same cost entries
    (edge s, cloud s, edge J at every context and phase): true of analytic tables."""
    c = env_params.costs
    attn = np.asarray(c.unit_is_attn)
    row = decode_layer_row(np.asarray(c.layer_rows), attn.shape[0])
    for block in (row.edge, row.cloud, row.edge_j):
        for kind in (attn, ~attn):
            part = block[..., kind]
            if part.size and not np.allclose(part, part[..., :1], rtol=rtol, atol=0):
                return False
    return True


MAX_EXHAUSTIVE_UNITS = 8


def candidate_actions(env: SplitEnv, env_params: EnvParams, layer_only: bool = False,
                      exhaustive: bool | None = None) -> Action:
    """Placements to search, as a batch Action (leading axis K): every boundary and format, with
    count-canonical unit sets (module docstring), or every unit subset when `exhaustive`; by default
    exhaustive exactly when same-kind units differ in cost (measured tables) and U <= 8, so the set is
    exact whenever that is affordable. One format where nothing crosses (cloud-only, edge-only).
    Infeasible entries are kept (the env projects them onto feasible placements, which are also in the
    set): K depends only on the env's static structure, so scenarios of one shape share compiled code.
    `layer_only`: pure layer splits (no unit of layer b on the edge)."""
    L, U = env.n_layers, env.n_units
    if exhaustive is None:
        exhaustive = U <= MAX_EXHAUSTIVE_UNITS and not units_identical(env_params)
    is_attn = np.asarray(env_params.costs.unit_is_attn)
    attn, ffn = np.flatnonzero(is_attn), np.flatnonzero(~is_attn)
    if layer_only:
        sets = [np.zeros(U, np.int32)]
    elif exhaustive:
        sets = list(((np.arange(2**U)[:, None] >> np.arange(U)) & 1).astype(np.int32))
    else:
        sets = []
        for n_a in range(len(attn) + 1):
            for n_f in range(len(ffn) + 1):
                units = np.zeros(U, np.int32)
                units[attn[:n_a]] = 1
                units[ffn[:n_f]] = 1
                sets.append(units)
    rows = [(L, 0, np.zeros(U, np.int32))]
    for b in range(L):
        for units in sets:
            for fmt in range(env.num_formats):
                if fmt and b == 0 and not units.any():
                    continue  # cloud-only: token ids cross, the format is irrelevant
                rows.append((b, fmt, units))
    return Action(boundary=jnp.asarray([r[0] for r in rows], jnp.int32), fmt=jnp.asarray([r[1] for r in rows], jnp.int32),
                  units=jnp.asarray(np.stack([r[2] for r in rows]), jnp.int32))


def pick(actions: Action, i) -> Action:
    return jax.tree.map(lambda a: a[i], actions)


def candidate_costs(env_params: EnvParams, actions: Action, prompt, output, cond: Conditions) -> dict:
    """request_cost of every (projected) candidate in the given conditions: dict of f32[K]."""
    fn = lambda b, f, u: action_cost(env_params, b, f, u, prompt, output, cond)  # noqa: E731
    return jax.vmap(fn)(actions.boundary, actions.fmt, actions.units)


candidate_costs_jit = jax.jit(candidate_costs)


def penalty(env_params: EnvParams, m: dict) -> jax.Array:
    """The drift-plus-penalty's penalty V·(w_lat lat/lat_ref + w_en E/E_ref + w_acc ΔPPL/acc_ref)."""
    return env_params.reward.V * slot_penalty(env_params, m)


def dpp_objective(env_params: EnvParams, state: EnvState, m: dict, arrivals) -> jax.Array:
    """The env's per-slot objective (`info["objective"]`) from a request's metrics `m` and the slot's
    arrivals: the same function the env's step calls (splitrl.env.slot.slot_queues)."""
    return slot_queues(env_params, state, m, arrivals)["objective"]


# ----------------------------------------------------------------------------- the policies


def myopic_action(env_params: EnvParams, state: EnvState, candidates: Action) -> Action:
    """The myopic DPP decision in `state`: the candidate of least one-slot objective (penalty + queue and
    virtual-queue drift) at the bandwidth estimate, last slot's RTT/loss/SNR/load/link and the expected
    admission wait and arrivals, in place of the slot's unknown truth (Neely's classic controller). The
    memory masks are the coming request's (they follow a conversation's cache: `sessions.params_at`)."""
    env_params = sessions.params_at(env_params, state)
    m = candidate_costs(env_params, candidates, state.prompt_len, state.output_len,
                        estimated_conditions(state, env_params))
    arrivals = env_params.workload.arrival_rate * env_params.slot_s
    return pick(candidates, jnp.argmin(dpp_objective(env_params, state, m, arrivals)))


def fleet_myopic_action(env_params: EnvParams, state: EnvState, candidates: Action, replicas, wait_ref_s,
                        batch_gain, congestion=1.0) -> Action:
    """`myopic_action` on the fleet's Lyapunov function (docs/fleet.md): the device's one-slot objective
    plus the whole drift its offloaded work adds to the shared cloud's L_cloud = ½ (W / W_ref)² at the
    published queue W (cloud_wait_est · C, one slot old): (W·a + a²/2) / W_ref², a = served · (cloud
    prefill s + cloud decode s / batch gain), as the fleet counts it. A device's own reward carries 1/N of
    that drift; this controller charges all of it (the team's one-slot optimum, each device assuming the
    others' work is what left W), times `congestion` (1: the drift itself; more: a price for the wait the
    work adds to every request queued behind it until the queue drains, which no one-slot drift counts)."""
    env_params = sessions.params_at(env_params, state)
    m = candidate_costs(env_params, candidates, state.prompt_len, state.output_len,
                        estimated_conditions(state, env_params))
    arrivals = env_params.workload.arrival_rate * env_params.slot_s
    q = slot_queues(env_params, state, m, arrivals)
    work = q["served"] * (m["cloud_prefill_s"] + m["cloud_decode_s"] / batch_gain)
    queue, ref = state.cloud_wait_est * replicas, replicas * wait_ref_s
    return pick(candidates, jnp.argmin(q["objective"] + congestion_charge(congestion, queue, work, ref)))
