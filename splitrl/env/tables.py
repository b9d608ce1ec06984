"""Host-side precomputation: profile tables -> the arrays one env step looks up.

The step's cost must not grow with model depth, so everything that sums over layers is a prefix
(edge) or suffix (cloud) sum computed here once; a step then reads one row for the layer split and
the units of the single boundary layer. All outputs are float32 numpy arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

from splitrl.profiles.errors import ProfileError
from splitrl.profiles.fit import placement_memory
from splitrl.profiles.formats import TX_FORMATS, tx_bytes_per_token
from splitrl.profiles.schema import Device, ModelArch
from splitrl.profiles.table_schema import CostTable, PPLSweep, PPLTable


# Entries of CostArrays.layer_rows[b, g, phase] (U = worker units of a layer):
#   [0, U)        edge s/token of each unit of the boundary layer min(b, L-1)
#   [U, 2U)       cloud s/token of each unit
#   [2U, 3U)      edge J/token of each unit
#   3U + 0..5     attn_norm, ffn_norm on the edge (s); on the cloud (s); on the edge (J)
#   3U + 6, 7     edge prefix: layers < b on the edge (s, J)
#   3U + 8        cloud suffix: layers > b on the cloud (s)
# This module packs the rows and is the only one that reads the layout: everyone else decodes.
def layer_row_offsets(U: int) -> dict[str, int]:
    return {"edge": 0, "cloud": U, "edge_j": 2 * U, "norm_edge": 3 * U, "norm_cloud": 3 * U + 2,
            "norm_edge_j": 3 * U + 4, "prefix": 3 * U + 6, "prefix_j": 3 * U + 7, "suffix": 3 * U + 8, "K": 3 * U + 9}


class LayerRow(NamedTuple):
    """A packed boundary row (`layer_rows[..., K]`) by field; each a view with the row's leading axes."""
    edge: Any          # [..., U] edge s/token of each unit of the boundary layer
    cloud: Any         # [..., U] cloud s/token of each unit
    edge_j: Any        # [..., U] edge J/token of each unit
    norm_edge: Any     # [..., 2] attn_norm, ffn_norm on the edge (s)
    norm_cloud: Any    # [..., 2] ... on the cloud (s)
    norm_edge_j: Any   # [..., 2] ... on the edge (J)
    prefix: Any        # [...] layers < b on the edge (s)
    prefix_j: Any      # [...] ... (J)
    suffix: Any        # [...] layers > b on the cloud (s)


def decode_layer_row(rows, U: int) -> LayerRow:
    """The fields of packed rows (numpy or JAX, any leading axes, K last)."""
    o = layer_row_offsets(U)
    return LayerRow(edge=rows[..., o["edge"]:o["edge"] + U], cloud=rows[..., o["cloud"]:o["cloud"] + U],
                    edge_j=rows[..., o["edge_j"]:o["edge_j"] + U], norm_edge=rows[..., o["norm_edge"]:o["norm_edge"] + 2],
                    norm_cloud=rows[..., o["norm_cloud"]:o["norm_cloud"] + 2],
                    norm_edge_j=rows[..., o["norm_edge_j"]:o["norm_edge_j"] + 2], prefix=rows[..., o["prefix"]],
                    prefix_j=rows[..., o["prefix_j"]], suffix=rows[..., o["suffix"]])


def compute_time_masks(U: int) -> dict[str, np.ndarray]:
    """Which entries of a packed layer row (K) and of the model totals (M) are compute times of each side:
    {"layer_edge", "layer_cloud": bool[K], "model_edge", "model_cloud": bool[M]} (joules are neither)."""
    o = layer_row_offsets(U)
    k = np.arange(o["K"])
    names = ModelRow._fields
    return {"layer_edge": (k < U) | ((k >= o["norm_edge"]) & (k < o["norm_edge"] + 2)) | (k == o["prefix"]),
            "layer_cloud": ((k >= o["cloud"]) & (k < o["cloud"] + U))
            | ((k >= o["norm_cloud"]) & (k < o["norm_cloud"] + 2)) | (k == o["suffix"]),
            "model_edge": np.array([n in ("edge_embed", "edge_head", "edge_all") for n in names]),
            "model_cloud": np.array([n in ("cloud_embed", "cloud_head", "cloud_all") for n in names])}


def scale_compute(layer_rows, model_rows, edge_scale, cloud_scale):
    """(layer_rows, model_rows) with every compute time of the edge side times `edge_scale` and of the cloud
    side times `cloud_scale` (the joules unchanged): a calibration of either side's speed (numpy or JAX,
    traced scales included)."""
    m = compute_time_masks((layer_rows.shape[-1] - 9) // 3)
    layer = layer_rows * (1 + (edge_scale - 1) * m["layer_edge"] + (cloud_scale - 1) * m["layer_cloud"])
    model = model_rows * (1 + (edge_scale - 1) * m["model_edge"] + (cloud_scale - 1) * m["model_cloud"])[None, :, None]
    return layer, model


class ModelRow(NamedTuple):
    """Whole-model totals (`model_rows[phase, M, G]`, M in this order), s/token unless _j (J/token)."""
    edge_embed: Any
    edge_embed_j: Any
    edge_head: Any      # final norm + LM head
    edge_head_j: Any
    cloud_embed: Any
    cloud_head: Any
    edge_all: Any       # every layer on the edge
    edge_all_j: Any
    cloud_all: Any      # every layer on the cloud


def decode_model_row(rows) -> ModelRow:
    """The fields of model totals with M last (numpy or JAX, any leading axes)."""
    return ModelRow(*(rows[..., i] for i in range(len(ModelRow._fields))))


def edge_cloud_ratio(costs):
    """The edge's whole-model decode time per token over the cloud's (embedding and head included), at the
    shortest context: how slow this device is, the `edge_ratio` feature's raw value (numpy or JAX)."""
    m = decode_model_row(costs.model_rows[1, :, 0])
    return (m.edge_embed + m.edge_head + m.edge_all) / (m.cloud_embed + m.cloud_head + m.cloud_all)


@dataclasses.dataclass(frozen=True)
class EdgeMemory:
    """Edge bytes of each placement, at the scenario's context (weights + KV cache)."""
    unit_bytes: np.ndarray   # [U] each work unit of a layer
    norm_bytes: float        # the two norms of a layer
    head_bytes: float        # final norm + LM head
    layer_budget: float      # edge memory left for the layers once the embedding is in


@dataclasses.dataclass(frozen=True)
class CostArrays:
    """Lookup arrays of one (model, edge, cloud) setting; G = context grid points, U = worker units.
    The env's `CostParams` are these arrays; the scenario also carries this host-side copy
    (`ScenarioInfo.costs`) for planners that price placements offline (`layer()`, `model()`, `memory`)."""
    ctx_grid: np.ndarray          # [G] (the cloud table is resampled onto the edge table's grid)
    layer_rows: np.ndarray        # [L+1, G, 2, K]: one gather reads each phase's two neighbouring grid points
    model_rows: np.ndarray        # [2, M, G]
    unit_is_attn: np.ndarray      # [U] bool: attention units first, then FFN chunks
    boundary_mask: np.ndarray     # [L+1] bool: boundary b fits edge memory (any worker choice within unit_mask)
    unit_mask: np.ndarray         # [L+1, U] bool: unit u may run on the edge when the boundary is b
    tx_bytes: np.ndarray          # [F] bytes per token of the hidden state in each transmission format
    mix: np.ndarray               # [2 sides (edge, cloud), 2 phases]: a split sublayer's units over their share of the whole layer
    memory: EdgeMemory | None = None

    def layer(self) -> LayerRow:
        return decode_layer_row(self.layer_rows, self.unit_is_attn.shape[0])

    def model(self) -> ModelRow:
        """Model totals [2 phases, G] per field."""
        return decode_model_row(np.moveaxis(self.model_rows, 1, -1))


def _resample(table: CostTable, grid: np.ndarray) -> CostTable:
    """Put a table on another context grid (linear interpolation, flat beyond the ends)."""
    if np.array_equal(table.context_grid, grid):
        return table

    def interp(a):
        return np.apply_along_axis(lambda v: np.interp(grid, table.context_grid, v), -1, a)

    blocks = {k: dataclasses.replace(b, prefill_s=interp(b.prefill_s), decode_s=interp(b.decode_s),
                                     prefill_j=interp(b.prefill_j), decode_j=interp(b.decode_j))
              for k, b in table.blocks.items()}
    return dataclasses.replace(table, context_grid=grid, prefill_s=interp(table.prefill_s),
                               decode_s=interp(table.decode_s), prefill_j=interp(table.prefill_j),
                               decode_j=interp(table.decode_j), blocks=blocks)


def fusion(table: CostTable) -> np.ndarray:
    """[prefill, decode] cost of a layer's units run one by one over the whole layer run at once: a
    measured table's own `provenance.layer_vs_units` (geometric mean over contexts, at least 1; the
    project's measurement of SmolLM2 on this host gives 1.18-1.23 in decode). 1 for analytic tables,
    whose units sum to the layer by construction and whose launch costs are charged per sublayer and
    side already (splitrl/profiles/launches.py)."""
    ratios = (table.provenance or {}).get("layer_vs_units")
    if not ratios:
        return np.ones(2)
    return np.array([max(float(np.exp(np.mean(np.log(ratios[ph]["ratio_units_over_layer"])))), 1.0)
                     for ph in ("prefill", "decode")])


def _phases(t: CostTable, kind: str) -> np.ndarray:
    """[2, L, U, G] prefill and decode arrays of a table ('s' seconds or 'j' joules)."""
    return np.stack([getattr(t, f"prefill_{kind}"), getattr(t, f"decode_{kind}")])


def _block(t: CostTable, names: tuple[str, ...], kind: str) -> np.ndarray:
    return sum(np.stack([getattr(t.blocks[n], f"prefill_{kind}"), getattr(t.blocks[n], f"decode_{kind}")])
               for n in names)


def build_cost_arrays(model: ModelArch, edge: Device, cloud: Device, edge_table: CostTable,
                      cloud_table: CostTable, context: int) -> CostArrays:
    """Lookup arrays for the env; memory masks use `context` tokens of KV cache."""
    grid = edge_table.context_grid
    cloud_table = _resample(cloud_table, grid)
    kinds = np.array(model.unit_kinds)
    norm_idx = np.flatnonzero(kinds == "norm")
    work_idx = np.flatnonzero(kinds != "norm")
    # whole layers at the layer's cost (units of a measured table were timed one by one; `fusion` says how
    # much more that costs), so a split sublayer's units cost `mix` times the whole-layer share
    mix = np.stack([fusion(edge_table), fusion(cloud_table)])                    # [2 sides, 2 phases]
    e_s, e_j = _phases(edge_table, "s") / mix[0, :, None, None, None], _phases(edge_table, "j") / mix[0, :, None, None, None]
    c_s = _phases(cloud_table, "s") / mix[1, :, None, None, None]
    L = model.n_layers
    zeros = np.zeros((2, 1, len(grid)))
    edge_prefix = np.concatenate([zeros, np.cumsum(e_s.sum(axis=2), axis=1)], axis=1)
    edge_prefix_j = np.concatenate([zeros, np.cumsum(e_j.sum(axis=2), axis=1)], axis=1)
    c_layer = c_s.sum(axis=2)
    cloud_suffix = np.concatenate([np.cumsum(c_layer[:, ::-1], axis=1)[:, ::-1], zeros], axis=1)

    boundary_mask, unit_mask, memory = memory_masks(model, edge, cloud, edge_table.weight_format,
                                                    cloud_table.weight_format, context)
    U, G = len(work_idx), len(grid)
    off = layer_row_offsets(U)
    rows = np.zeros((2, L + 1, off["K"], G))
    layer = np.minimum(np.arange(L + 1), L - 1)           # boundary L reuses layer L-1's units (unused)
    rows[:, :, off["edge"]:off["edge"] + U] = e_s[:, layer][:, :, work_idx]
    rows[:, :, off["cloud"]:off["cloud"] + U] = c_s[:, layer][:, :, work_idx]
    rows[:, :, off["edge_j"]:off["edge_j"] + U] = e_j[:, layer][:, :, work_idx]
    rows[:, :, off["norm_edge"]:off["norm_edge"] + 2] = e_s[:, layer][:, :, norm_idx]
    rows[:, :, off["norm_cloud"]:off["norm_cloud"] + 2] = c_s[:, layer][:, :, norm_idx]
    rows[:, :, off["norm_edge_j"]:off["norm_edge_j"] + 2] = e_j[:, layer][:, :, norm_idx]
    rows[:, :, off["prefix"]] = edge_prefix
    rows[:, :, off["prefix_j"]] = edge_prefix_j
    rows[:, :, off["suffix"]] = np.concatenate([cloud_suffix[:, 1:], np.zeros((2, 1, G))], axis=1)
    totals = ModelRow(
        edge_embed=_block(edge_table, ("embedding",), "s"), edge_embed_j=_block(edge_table, ("embedding",), "j"),
        edge_head=_block(edge_table, ("final_norm", "lm_head"), "s"),
        edge_head_j=_block(edge_table, ("final_norm", "lm_head"), "j"),
        cloud_embed=_block(cloud_table, ("embedding",), "s"), cloud_head=_block(cloud_table, ("final_norm", "lm_head"), "s"),
        edge_all=edge_prefix[:, L], edge_all_j=edge_prefix_j[:, L], cloud_all=cloud_suffix[:, 0])
    f32 = np.float32
    return CostArrays(
        ctx_grid=grid.astype(f32), layer_rows=rows.transpose(1, 3, 0, 2).astype(f32),
        model_rows=np.stack(totals, axis=1).astype(f32),
        unit_is_attn=(kinds[work_idx] == "attn"), boundary_mask=boundary_mask, unit_mask=unit_mask,
        tx_bytes=np.array([tx_bytes_per_token(model.d_model, f) for f in TX_FORMATS], dtype=f32), mix=mix.astype(f32),
        memory=memory,
    )


def memory_masks(model: ModelArch, edge: Device, cloud: Device, edge_format: str, cloud_format: str, context: int):
    """(boundary mask [L+1], unit mask [L+1, U], EdgeMemory) with `context` tokens of KV cache.

    Boundary b fits if layers < b (+ embedding) fit on the edge and the rest on the cloud; the worker
    may add units of layer b in table order while their running total fits, so any subset of the
    allowed units fits too (units moved to the edge only reduce what the cloud needs)."""
    edge_mem, cloud_mem = placement_memory(model, edge_format, cloud_format, context)
    kinds = np.array(model.unit_kinds)
    norm_idx, work_idx = np.flatnonzero(kinds == "norm"), np.flatnonzero(kinds != "norm")
    bpp = model.bytes_per_param[edge_format]
    unit_bytes = (model.unit_params() * bpp + model.unit_kv_values_per_token() * model.kv_bytes_per_value * context)
    emb_bytes = model.block_params()["embedding"] * bpp
    boundary_mask = (edge_mem <= edge.memory_bytes) & (cloud_mem <= cloud.memory_bytes)
    L = model.n_layers
    unit_mask = np.zeros((L + 1, len(work_idx)), dtype=bool)
    for b in range(L):
        base = edge_mem[b] + (emb_bytes if b == 0 else 0.0)
        running = base + np.cumsum(unit_bytes[work_idx]) + unit_bytes[norm_idx].sum()
        unit_mask[b] = (running <= edge.memory_bytes) & boundary_mask[b]
    if not boundary_mask.any():
        raise ProfileError(edge.path or edge.name, "memory_bytes", edge.memory_bytes,
                           f"no placement of {model.name} fits edge {edge.name} and cloud {cloud.name} at context {context}",
                           "use a smaller weight format, a shorter context or a bigger device")
    bp = model.block_params()
    memory = EdgeMemory(unit_bytes=unit_bytes[work_idx], norm_bytes=float(unit_bytes[norm_idx].sum()),
                        head_bytes=float((bp["final_norm"] + bp["lm_head"]) * bpp),
                        layer_budget=float(edge.memory_bytes - emb_bytes))
    return boundary_mask, unit_mask, memory


@dataclasses.dataclass(frozen=True)
class PPLArrays:
    """ΔPPL lookups on every boundary 0..L (interpolated over the measured boundaries).

    Boundary 0 without edge units is cloud-only (token ids cross, no damage) and boundary L is
    edge-only (nothing crosses): both are 0 by construction in the env, whatever the table says.
    """
    fmt: np.ndarray        # [L+1, F]  quantise-dequantise damage per transmission format
    loss_grid: np.ndarray  # [NL]      residual packet-loss rates (first point 0)
    loss: np.ndarray       # [L+1, NL]
    snr_grid: np.ndarray   # [NS]      SNR in dB, increasing
    snr: np.ndarray        # [L+1, NS]
    baseline_ppl: float
    source: str


def _over_boundaries(sweep: PPLSweep, L: int, src_layers: int) -> np.ndarray:
    """[L+1, ...] rows of a sweep, interpolated over boundaries by relative depth b / L."""
    b = np.asarray(sweep.axes["boundary"], dtype=np.float64) / src_layers
    target = np.arange(L + 1) / L
    flat = sweep.mean.reshape(len(b), -1)
    out = np.stack([np.interp(target, b, flat[:, j]) for j in range(flat.shape[1])], axis=-1)
    return out.reshape((L + 1,) + sweep.mean.shape[1:])


def build_ppl_arrays(table: PPLTable, src_model: ModelArch, model: ModelArch) -> PPLArrays:
    """ΔPPL arrays for `model` from a table measured on `src_model` (the same model, or a proxy mapped by
    relative depth). Missing sweeps mean that damage was not measured: a scenario that enables it errors."""
    L = model.n_layers
    fs = table.sweeps["format"]
    order = [list(fs.axes["format"]).index(f) if f in fs.axes["format"] else -1 for f in TX_FORMATS]
    if min(order) < 0:
        raise ProfileError(table.path, "sweeps.format.axes.format", list(fs.axes["format"]),
                           f"must include every transmission format {list(TX_FORMATS)}", "re-run `splitrl-profiles measure ppl`")
    fmt = _over_boundaries(fs, L, src_model.n_layers)[:, order]

    def sweep(name: str, default_grid: float):
        if name not in table.sweeps:
            return np.array([default_grid], np.float32), np.zeros((L + 1, 1), np.float32)
        s = table.sweeps[name]
        return np.asarray(s.axes[name], np.float32), _over_boundaries(s, L, src_model.n_layers).astype(np.float32)

    loss_grid, loss = sweep("loss", 0.0)
    if loss_grid[0] > 0:  # anchor: no loss, no damage
        loss_grid, loss = np.concatenate([[0.0], loss_grid]), np.concatenate([np.zeros((L + 1, 1)), loss], axis=1)
    snr_grid, snr = sweep("snr_db", 1e9)
    src = table.path if src_model.name == model.name else f"{table.path} (proxy: {src_model.name} by relative depth)"
    return PPLArrays(fmt=np.maximum(fmt, 0).astype(np.float32), loss_grid=loss_grid.astype(np.float32),
                     loss=np.maximum(loss, 0).astype(np.float32), snr_grid=snr_grid,
                     snr=np.maximum(snr, 0).astype(np.float32), baseline_ppl=float(table.baseline_ppl), source=str(src))
