"""SplitLLM-style allocation of layers between edge and cloud by dynamic programming.

SplitLLM allocates layers between client and server to maximise server throughput under a latency
SLA, by dynamic programming; the paper gives no DP, so this is ours. Per layer l the allocation
k_l in 0..U puts the first k_l units of the layer (table order: attention head groups, then FFN
chunks: the order the memory mask fills) on the edge and the rest on the cloud. Minimise the
cloud's compute seconds per request (server load) subject to

    edge memory  sum_l mem[l, k_l] (+ the head if everything ends on the edge) <= budget
    latency      sum of the per-layer times and hidden-state crossings        <= SLA

The hidden state's holder is tracked through the layers: E0 (edge, nothing computed yet: going up
sends token ids), E (edge), C0 (cloud, no edge compute: cloud-only so far, tokens stream back), C
(cloud after edge compute: every generated token returns to the edge). A whole-edge layer needs the
hidden state on the edge, a whole-cloud layer on the cloud; a mixed layer runs both sides in parallel
and merges partial sums on the cloud.

DP state (layer, holder, memory bucket, latency bucket) -> least cloud compute; memory and latency
increments are rounded *up* to buckets (conservative: a bucketed-feasible allocation is feasible).
`solve` is exact on the bucketed problem (tests/test_baselines.py checks it against brute force).

The env runs a layer prefix on the edge plus one split boundary layer, so the DP's allocation is
projected onto that: b = the number of leading whole-edge layers, and layer b's first k_b units on
the edge (transmission in fp16: SplitLLM does not compress activations). Layer costs and crossings
are priced from the env's tables at the mean request, mean RTT, loss and cloud load, on a grid of
bandwidths; at run time the policy looks up the bin of the bandwidth estimate.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from splitrl.baselines.base import PolicyBase
from splitrl.env.cost import lerp_index, transfer_time
from splitrl.env.nominal import nominal
from splitrl.env.tables import CostArrays
from splitrl.env.types import Action, Conditions
from splitrl.profiles.formats import TOKEN_ID_BYTES

E0, E, C0, C = 0, 1, 2, 3
HOLDERS = 4


@dataclasses.dataclass(frozen=True)
class LayerProblem:
    """One request's allocation problem (seconds and bytes per request)."""
    edge_s: np.ndarray     # [L, U+1] edge seconds of layer l when its first k units run on the edge
    cloud_s: np.ndarray    # [L, U+1] cloud seconds of the other units
    mem: np.ndarray        # [L, U+1] edge bytes of the first k units
    x_hidden: float        # seconds of one hidden-state crossing (prompt in prefill + one per generated token)
    x_ids: float           # seconds to send the prompt's token ids (start of cloud-only)
    x_tokens: float        # seconds to return every generated token to the edge (split inference)
    x_stream: float        # seconds to stream tokens back from the cloud (cloud-only)
    head_edge_s: float
    head_cloud_s: float
    head_mem: float        # edge bytes of the head (edge-only)
    mem_budget: float      # edge bytes available to the layers
    sla_s: float


def transition(p: LayerProblem, layer: int, h: int, k: int) -> tuple[int, float, float, float]:
    """(holder after, seconds, edge bytes, cloud seconds) of running layer `layer` with k edge units
    from holder h."""
    U = p.edge_s.shape[1] - 1
    e, c, X = p.edge_s[layer, k], p.cloud_s[layer, k], p.x_hidden
    on_edge = h in (E0, E)
    if k == U:
        return E, e + (0.0 if on_edge else X), p.mem[layer, k], c
    if k == 0:
        up = p.x_ids if h == E0 else (X if h == E else 0.0)
        return (C0 if h in (E0, C0) else C), up + c, p.mem[layer, k], c
    t = (max(e, X + c) if on_edge else max(X + e, c)) + X
    return C, t, p.mem[layer, k], c


def finish(p: LayerProblem, h: int) -> tuple[float, float, float]:
    """(seconds, edge bytes, cloud seconds) after the last layer, by holder."""
    if h == E:
        return p.head_edge_s, p.head_mem, 0.0
    if h == C0:
        return p.head_cloud_s + p.x_stream, 0.0, p.head_cloud_s
    return p.head_cloud_s + p.x_tokens, 0.0, p.head_cloud_s  # C (E0 is unreachable after >= 1 layer)


@dataclasses.dataclass(frozen=True)
class Buckets:
    mem: float      # bytes per memory bucket
    lat: float      # seconds per latency bucket
    n_mem: int
    n_lat: int      # latency buckets covered (the SLA is bucket `sla`)
    sla: int

    def m(self, x: float) -> int:
        return math.ceil(x / self.mem - 1e-9) if x > 0 else 0

    def t(self, x: float) -> int:
        return math.ceil(x / self.lat - 1e-9) if x > 0 else 0


def make_buckets(p: LayerProblem, n_mem: int = 64, n_lat: int = 64, lat_range: float = 4.0) -> Buckets:
    """n_lat buckets up to the SLA, and the range extended to lat_range x SLA (for the fallback)."""
    return Buckets(mem=p.mem_budget / n_mem, lat=p.sla_s / n_lat, n_mem=n_mem, n_lat=int(n_lat * lat_range), sla=n_lat)


def solve(p: LayerProblem, bk: Buckets) -> tuple[np.ndarray | None, float, bool]:
    """The allocation k[L] of least cloud compute within memory and the SLA (bucketed), its cloud
    compute, and whether the SLA was met; if no allocation meets the SLA, the one of least latency
    (within lat_range x SLA), and if none, (None, inf, False)."""
    L, U1 = p.edge_s.shape
    M, T = bk.n_mem, bk.n_lat
    V = np.full((HOLDERS, M + 1, T + 1), np.inf)
    V[E0, 0, 0] = 0.0
    choice = np.full((L, HOLDERS, M + 1, T + 1), -1, np.int32)
    inc = {}
    for layer in range(L):
        new = np.full_like(V, np.inf)
        for h in range(HOLDERS):
            if not np.isfinite(V[h]).any():
                continue
            for k in range(U1):
                h2, dt, dm, dc = transition(p, layer, h, k)
                di, dmi = bk.t(dt), bk.m(dm)
                inc[layer, h, k] = (h2, di, dmi, dc)
                if di > T or dmi > M:
                    continue
                cand = V[h, : M + 1 - dmi, : T + 1 - di] + dc
                tgt = new[h2, dmi:, di:]
                better = cand < tgt
                tgt[better] = cand[better]
                choice[layer, h2, dmi:, di:][better] = h * U1 + k
        V = new
    best = None  # ((sla missed, first criterion, second criterion), h, m, t, cloud)
    tt_grid = np.arange(T + 1)
    for h in (E, C0, C):
        ft, fm, fc = finish(p, h)
        fti, fmi = bk.t(ft), bk.m(fm)
        v = V[h, : M + 1 - fmi] + fc                        # [m, t]
        tt = np.broadcast_to(tt_grid + fti, v.shape)
        ok = np.isfinite(v)
        for missed, mask in ((0, ok & (tt <= bk.sla)), (1, ok & (tt <= T))):
            if not mask.any():
                continue
            first, second = (v, tt) if missed == 0 else (tt, v)
            idx = np.flatnonzero(mask)
            j = idx[np.lexsort((second.ravel()[idx], first.ravel()[idx]))[0]]
            m, t = divmod(int(j), T + 1)
            key = (missed, float(first.ravel()[j]), float(second.ravel()[j]))
            if best is None or key < best[0]:
                best = (key, h, m, t, float(v[m, t]))
            break
    if best is None:
        return None, math.inf, False
    key, h, m, t, cloud = best
    alloc = np.zeros(L, np.int32)
    for layer in range(L - 1, -1, -1):
        code = int(choice[layer, h, m, t])
        hp, k = divmod(code, U1)
        _, di, dmi, _ = inc[layer, hp, k]
        alloc[layer] = k
        h, m, t = hp, m - dmi, t - di
    return alloc, float(cloud), key[0] == 0


def evaluate(p: LayerProblem, bk: Buckets, alloc) -> tuple[float, int, int]:
    """(cloud compute, latency buckets, memory buckets) of an allocation under the bucketed model
    (what `solve` optimises); memory/latency beyond the range are returned as they are."""
    h, t, m, cloud = E0, 0, 0, 0.0
    for layer, k in enumerate(alloc):
        h, dt, dm, dc = transition(p, layer, h, int(k))
        t, m, cloud = t + bk.t(dt), m + bk.m(dm), cloud + dc
    ft, fm, fc = finish(p, h)
    return cloud + fc, t + bk.t(ft), m + bk.m(fm)


def project(alloc: np.ndarray, n_units: int) -> tuple[int, np.ndarray]:
    """(boundary, units[U]) of the env action closest to a DP allocation: the leading whole-edge
    layers, then layer b's first k_b units on the edge; later edge units are dropped (cloud)."""
    full = alloc == n_units
    b = int(np.argmin(full)) if not full.all() else len(alloc)
    units = np.zeros(n_units, np.int32)
    if b < len(alloc):
        units[: alloc[b]] = 1
    return b, units


# ----------------------------------------------------------------------------- from the env's tables
def problem_from_env(costs: CostArrays, env_params, prompt: float, output: float, cond: Conditions,
                     sla_s: float) -> LayerProblem:
    """The allocation problem of the mean request in conditions `cond`, priced from the scenario's cost
    tables (`ScenarioInfo.costs`) and edge memory (weights + KV cache at the scenario's context)."""
    ch, mem = env_params.channel, costs.memory
    layer, model, grid = costs.layer(), costs.model(), costs.ctx_grid
    L, U = layer.prefix.shape[0] - 1, costs.unit_is_attn.shape[0]
    slow = 1.0 / (1.0 - cond.cloud_load)
    i_pre, w_pre = (float(v) for v in lerp_index(jnp.asarray(grid), jnp.float32(prompt)))
    i_dec, w_dec = (float(v) for v in lerp_index(jnp.asarray(grid), jnp.float32(prompt + output / 2)))

    def per_request(field):   # [L+1, G, 2, n] -> [L, n]: prompt tokens of prefill + output tokens of decode
        i, j = int(i_pre), int(i_dec)
        pre = field[:L, i, 0] * (1 - w_pre) + field[:L, i + 1, 0] * w_pre
        dec = field[:L, j, 1] * (1 - w_dec) + field[:L, j + 1, 1] * w_dec
        return prompt * pre + output * dec

    te, tc = per_request(layer.edge), slow * per_request(layer.cloud)
    ne, nc = per_request(layer.norm_edge).sum(1), slow * per_request(layer.norm_cloud).sum(1)
    cum_e = np.concatenate([np.zeros((L, 1)), np.cumsum(te, 1)], 1)          # [L, U+1]
    cum_c = np.concatenate([np.cumsum(tc[:, ::-1], 1)[:, ::-1], np.zeros((L, 1))], 1)
    k = np.arange(U + 1)
    edge_s = cum_e + (k > 0) * ne[:, None]
    cloud_s = cum_c + (k < U) * nc[:, None]
    mem_k = np.concatenate([[0.0], np.cumsum(mem.unit_bytes)]) + (k > 0) * mem.norm_bytes
    i = int(i_dec)
    head_at = lambda a: float(a[1, i] * (1 - w_dec) + a[1, i + 1] * w_dec)  # noqa: E731  (decode context)
    hidden = float(np.asarray(costs.tx_bytes)[0])

    def tx(nbytes):
        return float(transfer_time(jnp.float32(nbytes), cond.bw, cond.rtt, cond.loss_p, ch.packet_bytes, ch.max_retx))

    return LayerProblem(edge_s=edge_s, cloud_s=cloud_s, mem=np.broadcast_to(mem_k, (L, U + 1)).copy(),
                        x_hidden=tx(prompt * hidden) + output * tx(hidden), x_ids=tx(prompt * TOKEN_ID_BYTES),
                        x_tokens=(output + 1) * tx(TOKEN_ID_BYTES), x_stream=cond.rtt / 2,
                        head_edge_s=head_at(model.edge_head) * (1 + output),
                        head_cloud_s=slow * head_at(model.cloud_head) * (1 + output), head_mem=mem.head_bytes,
                        mem_budget=mem.layer_budget, sla_s=sla_s)


# ----------------------------------------------------------------------------- the policy
@dataclasses.dataclass(frozen=True)
class SplitLLMDP(PolicyBase):
    """SplitLLM-style: the layer/unit allocation of least cloud compute (server load) within the edge
    memory and a latency SLA (`sla_factor` x the scenario's typical latency lat_ref_s), by dynamic
    programming over layers (splitrl/baselines/splitllm.py), solved offline for the mean request on a
    grid of `n_bins` bandwidths and projected onto the env's action space; at run time the policy
    looks up the bin of the bandwidth estimate."""
    sla_factor: float = 1.0
    n_bins: int = 24
    n_buckets: int = 64              # memory and latency buckets of the DP (latency: up to the SLA)
    name: str = "splitllm_dp"

    def init(self, env, env_params, spec=None, key=None):
        if spec is None:
            raise ValueError("splitllm_dp needs the scenario spec (its cost tables and edge memory): pass the "
                             "ScenarioSpec the env was built from (splitrl.evaluation.run.scenario_spec; on a fleet, "
                             "splitrl.evaluation.fleet.init_per_device with the FleetInfo)")
        prompt, output, cond = nominal(env.channel_kind, env_params)
        bw_grid = np.geomspace(max(cond.bw / 300, float(env_params.channel.bw_min)), cond.bw * 30, self.n_bins)
        sla = self.sla_factor * float(env_params.reward.lat_ref_s)
        b_tab, u_tab, met = [], [], []
        for bw in bw_grid:
            prob = problem_from_env(spec.info.costs, env_params, prompt, output, cond.replace(bw=float(bw)), sla)
            alloc, _, ok = solve(prob, make_buckets(prob, self.n_buckets, self.n_buckets))
            b, units = (0, np.zeros(env.n_units, np.int32)) if alloc is None else project(alloc, env.n_units)
            b_tab.append(b)
            u_tab.append(units)
            met.append(ok)
        edges = np.sqrt(bw_grid[1:] * bw_grid[:-1])   # geometric midpoints between grid points
        return {"edges": jnp.asarray(edges, jnp.float32), "boundary": jnp.asarray(b_tab, jnp.int32),
                "units": jnp.asarray(np.stack(u_tab), jnp.int32), "sla_met": jnp.asarray(met)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        i = jnp.searchsorted(pparams["edges"], state.bw_est)
        return Action(boundary=pparams["boundary"][i], fmt=jnp.int32(0), units=pparams["units"][i])

