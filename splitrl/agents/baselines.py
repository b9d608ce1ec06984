"""Baseline policies and the full-information oracle: one interface, pure JAX, usable in the same
vmapped rollout as a trained agent (`splitrl.evaluate.rollout`).

A policy is a frozen dataclass (hashable, so it is a static jit argument; equal fields share compiled
code) with two methods:

    init(env, env_params, spec, key) -> pparams
        host side, once per scenario: precompute tables, solve a DP, train a network. `spec` is the
        `ScenarioSpec` (name, mapping, ScenarioInfo) the env was built from.
    __call__(pparams, key, obs, state, env_params, step_key) -> Action
        pure, one unbatched env (the rollout vmaps). `key` is the policy's own randomness.

What a policy may read. `obs` is what the agent sees. `state` is the EnvState: a causal policy reads
from it only fields the observation also shows, unnormalised (`bw_est`, `rtt`, `loss_p`, `snr_db`,
`cloud_load`, `prompt_len`, `output_len`, `backlog`, `z_energy`, `z_acc`, `last_boundary`).
`step_key` is the key the env will step this slot with: **only the oracle reads it** (with `state`'s
hidden channel latents it determines the slot's true bandwidth, RTT, fading and arrivals).

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

import dataclasses
import math
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from splitrl.env.cost import action_cost
from splitrl.env.split_env import SplitEnv, slot_penalty, slot_queues
from splitrl.env.types import Action, EnvParams, EnvState


class ScenarioSpec(NamedTuple):
    """What a scenario was built from: its name, its YAML mapping and the ScenarioInfo."""
    name: str
    data: dict
    info: Any


# ----------------------------------------------------------------------------- candidates
def units_identical(env_params: EnvParams, rtol: float = 1e-6) -> bool:
    """Whether every unit of one kind (attention / FFN) in a layer has the same cost entries
    (edge s, cloud s, edge J at every context and phase): true of analytic tables."""
    from splitrl.env.tables import layer_row_offsets
    c = env_params.costs
    attn = np.asarray(c.unit_is_attn)
    U = attn.shape[0]
    o = layer_row_offsets(U)
    rows = np.asarray(c.layer_rows)
    for start in (o["edge"], o["cloud"], o["edge_j"]):
        block = rows[..., start:start + U]
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


def all_actions(env: SplitEnv, env_params: EnvParams) -> Action:
    """Every allowed (b, fmt, unit subset): 2^U per boundary. For tests (exactness of the above)."""
    c = env_params.costs
    U = env.n_units
    bmask, umask = np.asarray(c.boundary_mask), np.asarray(c.unit_mask)
    subsets = ((np.arange(2**U)[:, None] >> np.arange(U)) & 1).astype(np.int32)
    rows = [(b, f, s) for b in np.flatnonzero(bmask) for f in range(env.num_formats) for s in subsets
            if not (s.astype(bool) & ~umask[b]).any()]
    return Action(boundary=jnp.asarray([r[0] for r in rows], jnp.int32), fmt=jnp.asarray([r[1] for r in rows], jnp.int32),
                  units=jnp.asarray(np.stack([r[2] for r in rows]), jnp.int32))


def pick(actions: Action, i) -> Action:
    return jax.tree.map(lambda a: a[i], actions)


def candidate_costs(env_params: EnvParams, actions: Action, prompt, output, bw, rtt, loss_p, snr_db, load) -> dict:
    """request_cost of every (projected) candidate at the given conditions: dict of f32[K]."""
    fn = lambda b, f, u: action_cost(env_params, b, f, u, prompt, output, bw, rtt, loss_p, snr_db, load)  # noqa: E731
    return jax.vmap(fn)(actions.boundary, actions.fmt, actions.units)


_candidate_costs_jit = jax.jit(candidate_costs)


def penalty(env_params: EnvParams, m: dict) -> jax.Array:
    """The drift-plus-penalty's penalty V·(w_lat lat/lat_ref + w_en E/E_ref + w_acc ΔPPL/acc_ref)."""
    return env_params.reward.V * slot_penalty(env_params, m)


def dpp_objective(env_params: EnvParams, state: EnvState, m: dict, arrivals) -> jax.Array:
    """The env's per-slot objective (`info["objective"]`) from a request's metrics `m` and the slot's
    arrivals: the same function the env's step calls (splitrl.env.split_env.slot_queues)."""
    return slot_queues(env_params, state, m, arrivals)["objective"]


def mean_bandwidth(env: SplitEnv, env_params: EnvParams) -> float:
    """Stationary mean bandwidth (bytes/s) of the scenario's channel process."""
    p = env_params.channel
    if env.channel_kind == "trace":
        return float(np.mean(np.maximum(np.asarray(p.trace_bw), float(p.bw_min))))
    if env.channel_kind == "regime":
        vals, vecs = np.linalg.eig(np.asarray(p.regime_trans).T)
        pi = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
        pi = pi / pi.sum()
        return float(np.dot(pi, np.exp(np.asarray(p.regime_log_mean) + np.asarray(p.regime_log_std) ** 2 / 2)))
    return float(np.exp(float(p.bw_log_mean) + float(p.bw_log_std) ** 2 / 2))


def mean_request(env_params: EnvParams) -> tuple[float, float]:
    w = env_params.workload
    probs = np.asarray(w.class_probs)
    prompt = float(np.dot(probs, (np.asarray(w.prompt_lo) + np.asarray(w.prompt_hi)) / 2))
    output = float(np.dot(probs, (np.asarray(w.output_lo) + np.asarray(w.output_hi)) / 2))
    return prompt, output


def nominal_conditions(env: SplitEnv, env_params: EnvParams) -> dict:
    """Typical conditions: mean bandwidth, mean request, mean RTT, loss at the median fading scale,
    mean SNR and mean cloud load."""
    p = env_params.channel
    prompt, output = mean_request(env_params)
    loss = 1 - math.exp(-float(p.h_th) ** 2 / (2 * math.exp(float(p.fade_log_mean)) ** 2))
    return {"prompt": prompt, "output": output, "bw": mean_bandwidth(env, env_params), "rtt": float(p.rtt_mean_s),
            "loss_p": loss, "snr_db": float(p.snr_db_mean), "load": float(env_params.workload.cloud_load_mean)}


# ----------------------------------------------------------------------------- the policies
class PolicyBase:
    """`bind(env, env_params)` returns the policy specialised to a scenario's static structure (the
    oracle keeps the env it simulates); host side, before `init`."""

    def bind(self, env, env_params):
        return self

@dataclasses.dataclass(frozen=True)
class CloudOnly(PolicyBase):
    """Everything on the cloud: the prompt's token ids go up, tokens stream back."""
    name: str = "cloud_only"

    def init(self, env, env_params, spec=None, key=None):
        return {"units": jnp.zeros(env.n_units, jnp.int32)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return Action(boundary=jnp.int32(0), fmt=jnp.int32(0), units=pparams["units"])


@dataclasses.dataclass(frozen=True)
class EdgeOnly(PolicyBase):
    """Everything on the edge (b = L). Where the model does not fit the edge, the env's projection
    keeps as much as fits: the deepest allowed boundary with its allowed units on the edge
    (the table marks such rows `edge_fits = False`)."""
    name: str = "edge_only"

    def init(self, env, env_params, spec=None, key=None):
        return {"units": jnp.ones(env.n_units, jnp.int32), "b": jnp.int32(env.n_layers)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return Action(boundary=pparams["b"], fmt=jnp.int32(0), units=pparams["units"])


@dataclasses.dataclass(frozen=True)
class RandomPolicy(PolicyBase):
    """Uniform over allowed boundaries and formats, each allowed unit on the edge with probability 1/2."""
    name: str = "random"

    def init(self, env, env_params, spec=None, key=None):
        return {}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        kb, kf, ku = jax.random.split(key, 3)
        b = jax.random.categorical(kb, jnp.where(obs.boundary_mask, 0.0, -jnp.inf)).astype(jnp.int32)
        fmt = jax.random.randint(kf, (), 0, obs.format_mask.shape[0]).astype(jnp.int32)
        units = (jax.random.bernoulli(ku, 0.5, obs.unit_mask[b].shape) & obs.unit_mask[b]).astype(jnp.int32)
        return Action(boundary=b, fmt=fmt, units=units)


@dataclasses.dataclass(frozen=True)
class StaticSplit(PolicyBase):
    """Neurosurgeon-style: one layer split (and transmission format), chosen offline at the scenario's
    nominal conditions (mean bandwidth, mean request, mean RTT, loss and cloud load) to minimise the
    scenario's own penalty V·(w_lat·lat + w_en·E + w_acc·ΔPPL) (normalised); never changes."""
    name: str = "static_split"

    def init(self, env, env_params, spec=None, key=None):
        cands = candidate_actions(env, env_params, layer_only=True)
        n = nominal_conditions(env, env_params)
        m = _candidate_costs_jit(env_params, cands, n["prompt"], n["output"], n["bw"], n["rtt"], n["loss_p"], n["snr_db"],
                            n["load"])
        return pick(cands, int(jnp.argmin(penalty(env_params, m))))

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        return pparams


@dataclasses.dataclass(frozen=True)
class GreedyLatency(PolicyBase):
    """Myopic: the placement with the lowest expected latency for this slot's request at the
    bandwidth *estimate* (and last slot's RTT, loss, SNR, cloud load), over the count-canonical
    candidates. Ignores energy, accuracy and queues."""
    name: str = "greedy_latency"

    def init(self, env, env_params, spec=None, key=None):
        return candidate_actions(env, env_params, exhaustive=False)

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        m = candidate_costs(env_params, pparams, state.prompt_len, state.output_len, state.bw_est, state.rtt,
                            state.loss_p, state.snr_db, state.cloud_load)
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
        m = candidate_costs(env_params, pparams, state.prompt_len, state.output_len, state.bw_est, state.rtt,
                            state.loss_p, state.snr_db, state.cloud_load)
        arrivals = env_params.workload.arrival_rate * env_params.slot_s
        return pick(pparams, jnp.argmin(dpp_objective(env_params, state, m, arrivals)))


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

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        obj = jax.vmap(lambda a: self.env.step_env(step_key, state, a, env_params)[4]["objective"])(pparams)
        return pick(pparams, jnp.argmin(obj))


def oracle_objectives(env: SplitEnv, env_params: EnvParams, state: EnvState, step_key, actions: Action) -> jax.Array:
    """The one-slot objective of each action from the same state and key (for tests and the oracle)."""
    return jax.vmap(lambda a: env.step_env(step_key, state, a, env_params)[4]["objective"])(actions)


@dataclasses.dataclass(frozen=True)
class SplitLLMDP(PolicyBase):
    """SplitLLM-style: the layer/unit allocation of least cloud compute (server load) within the edge
    memory and a latency SLA (`sla_factor` x the scenario's typical latency lat_ref_s), by dynamic
    programming over layers (splitrl/agents/splitllm.py), solved offline for the mean request on a
    grid of `n_bins` bandwidths and projected onto the env's action space; at run time the policy
    looks up the bin of the bandwidth estimate."""
    sla_factor: float = 1.0
    n_bins: int = 24
    n_buckets: int = 64              # memory and latency buckets of the DP (latency: up to the SLA)
    name: str = "splitllm_dp"

    def init(self, env, env_params, spec=None, key=None):
        from splitrl.agents import splitllm
        if spec is None:
            raise ValueError("splitllm_dp needs the scenario spec (edge memory comes from the profiles)")
        unit_bytes, norm_bytes, head_bytes, budget = splitllm.edge_memory(spec)
        n = nominal_conditions(env, env_params)
        bw_grid = np.geomspace(max(n["bw"] / 300, float(env_params.channel.bw_min)), n["bw"] * 30, self.n_bins)
        sla = self.sla_factor * float(env_params.reward.lat_ref_s)
        b_tab, u_tab, met = [], [], []
        for bw in bw_grid:
            prob = splitllm.problem_from_env(env_params, unit_bytes, norm_bytes, head_bytes, budget, n["prompt"],
                                             n["output"], float(bw), n["rtt"], n["loss_p"], n["load"], sla)
            alloc, _, ok = splitllm.solve(prob, splitllm.make_buckets(prob, self.n_buckets, self.n_buckets))
            b, units = (0, np.zeros(env.n_units, np.int32)) if alloc is None else splitllm.project(alloc, env.n_units)
            b_tab.append(b)
            u_tab.append(units)
            met.append(ok)
        edges = np.sqrt(bw_grid[1:] * bw_grid[:-1])   # geometric midpoints between grid points
        return {"edges": jnp.asarray(edges, jnp.float32), "boundary": jnp.asarray(b_tab, jnp.int32),
                "units": jnp.asarray(np.stack(u_tab), jnp.int32), "sla_met": jnp.asarray(met)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        i = jnp.searchsorted(pparams["edges"], state.bw_est)
        return Action(boundary=pparams["boundary"][i], fmt=jnp.int32(0), units=pparams["units"][i])


@dataclasses.dataclass(frozen=True)
class ChenPPO(PolicyBase):
    """Chen et al.'s layer-wise PPO (splitrl/agents/chen.py): trained on their MDP (surrogate reward,
    5-step episodes) at `init`, then run greedily in our env: split ± 1 from the last boundary."""
    n_layers: int = 0
    lam: float = 1.0
    total_timesteps: int = 64_000
    name: str = "chen_ppo"

    def bind(self, env, env_params):
        return dataclasses.replace(self, n_layers=env.n_layers)

    def init(self, env, env_params, spec=None, key=None):
        from splitrl.agents.chen import train_chen
        t = train_chen(env, env_params, jax.random.PRNGKey(0) if key is None else key, self.lam, self.total_timesteps)
        return {"actor": t.actor, "lo": jnp.int32(t.lo), "hi": jnp.int32(t.hi),
                "surrogate_rmse": jnp.float32(t.surrogate_rmse), "surrogate_target_std": jnp.float32(t.surrogate_target_std)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        from splitrl.agents.chen import chen_features
        from splitrl.agents.networks import FlatPolicy
        split = jnp.clip(state.last_boundary, pparams["lo"], pparams["hi"])
        x = chen_features(env_params, state, split, self.n_layers)
        a = FlatPolicy(3, (64, 64), "separate").greedy(pparams["actor"], x)
        mask = env_params.costs.boundary_mask
        idx = jnp.arange(mask.shape[0])
        target = jnp.clip(split + a - 1, pparams["lo"], pparams["hi"])
        ok = mask & (idx <= target) & (idx >= pparams["lo"])
        b = jnp.where(ok.any(), jnp.max(jnp.where(ok, idx, -1)), pparams["lo"]).astype(jnp.int32)
        return Action(boundary=b, fmt=jnp.int32(0), units=jnp.zeros(obs.unit_mask.shape[1], jnp.int32))


# ----------------------------------------------------------------------------- trained checkpoints
@dataclasses.dataclass(frozen=True)
class Trained(PolicyBase):
    """A policy trained by `splitrl-train` (HPPO or flat PPO), run greedily (argmax). `init` loads
    `<run_dir>/final_params.msgpack` (member `member` of the vmapped batch) and checks the run was
    trained on this scenario (by id) with this env's shapes."""
    name: str
    run_dir: str
    policy: str = "hierarchical"     # hierarchical | flat (from the run's resolved_config.yaml)
    hidden: tuple = (64, 64)
    critic: str = "separate"
    member: int = 0
    flat_env: Any = None             # set by bind() for flat policies (the FlatSplitEnv action subset)

    @staticmethod
    def from_run_dir(run_dir: str, name: str | None = None, member: int = 0) -> Trained:
        cfg_path = Path(run_dir) / "resolved_config.yaml"
        if not cfg_path.is_file():
            raise ValueError(f"{run_dir}: no resolved_config.yaml; pass the run dir of a finished splitrl-train run")
        cfg = yaml.safe_load(cfg_path.read_text())
        a = cfg["agent"]
        return Trained(name=name or a["name"], run_dir=str(run_dir), policy=a["policy"], hidden=tuple(a["hidden"]),
                       critic=a["critic"], member=member)

    def scenario_id(self) -> str:
        return yaml.safe_load((Path(self.run_dir) / "resolved_config.yaml").read_text())["scenario"]["id"]

    def _net_from_obs(self, obs):
        from splitrl.agents.networks import HierarchicalPolicy
        L1, F, U = obs.boundary_mask.shape[0], obs.format_mask.shape[0], obs.unit_mask.shape[1]
        return HierarchicalPolicy(L1, F, U, self.hidden, self.critic)

    def _net(self, env):
        from splitrl.agents.networks import FlatPolicy, HierarchicalPolicy
        if self.policy == "hierarchical":
            return HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, self.hidden, self.critic)
        from splitrl.env.flat import PATTERNS
        return FlatPolicy(env.num_boundaries * env.num_formats * len(PATTERNS), self.hidden, self.critic)

    def init(self, env, env_params, spec=None, key=None):
        from flax import serialization
        path = Path(self.run_dir) / "final_params.msgpack"
        if not path.is_file():
            raise ValueError(f"{path}: missing; the run did not finish (summary.json says how far it got)")
        if spec is not None and spec.info.id != self.scenario_id():
            raise ValueError(f"{self.run_dir} was trained on scenario {self.scenario_id()!r}, not {spec.info.id!r}")
        raw = serialization.msgpack_restore(path.read_bytes())
        params = jax.tree.map(lambda x: jnp.asarray(x[self.member]), raw)
        # shape check against a fresh init on this env
        obs, _ = env.reset_env(jax.random.PRNGKey(0), env_params)
        if self.policy == "flat":
            from splitrl.env.flat import FlatSplitEnv
            obs = FlatSplitEnv(env, env_params)._obs(obs, env_params)
        ref = self._net(env).init(jax.random.PRNGKey(0), obs)
        if jax.tree.structure(ref) != jax.tree.structure(params) or any(
                a.shape != b.shape for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(params), strict=True)):
            raise ValueError(f"{path}: parameters do not fit this env's shapes (trained on another model?)")
        return params

    def bind(self, env, env_params) -> Trained:
        if self.policy != "flat":
            return self
        from splitrl.env.flat import FlatSplitEnv
        return dataclasses.replace(self, flat_env=FlatSplitEnv(env, env_params))

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        if self.policy == "hierarchical":
            net = self._net_from_obs(obs)
            a = net.greedy(pparams, obs)
            return Action(boundary=a.boundary, fmt=a.fmt, units=a.units)
        flat = self.flat_env
        net = self._net(flat.env)
        a = net.greedy(pparams, flat._obs(obs, env_params))
        return flat.to_action(a)


BASELINES = {"cloud_only": CloudOnly, "edge_only": EdgeOnly, "random": RandomPolicy, "static_split": StaticSplit,
             "greedy_latency": GreedyLatency, "myopic_dpp": MyopicDPP, "splitllm_dp": SplitLLMDP, "chen_ppo": ChenPPO,
             "oracle_dpp": Oracle}


def make_baseline(name: str, **kwargs) -> PolicyBase:
    """A baseline by name (BASELINES); keyword arguments set its fields (e.g. sla_factor)."""
    if name not in BASELINES:
        raise ValueError(f"baseline {name!r} is unknown; known: {sorted(BASELINES)} (trained policies: give a run dir)")
    return BASELINES[name](**kwargs)
