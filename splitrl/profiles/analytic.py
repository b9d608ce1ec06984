"""Roofline cost model: the cost table a measurement would give, from datasheet numbers.

For one placement unit and one token:
    time   = max(weight FLOPs / weight_flops(format) + other FLOPs / flops(activation dtype),
                 bytes / (mem_bw * memory_eff))
             + launches * kernel_overhead / tokens_per_call
    energy = time * power_active
Decode (one token, batch 1) streams every weight once per token, so it is memory-bound on every
device we ship; prefill of S tokens reads the weights once for S tokens and is compute-bound.
Attention reads `keys` cached tokens: `context` in decode, (S + 1) / 2 on average in causal prefill.
Launches are counted per sublayer in the device's runtime and sit on the sublayer's norm unit
(`splitrl.profiles.launches`); the attention and FFN units carry none.
References: Williams, Waterman, Patterson, "Roofline", CACM 2009; Kaplan et al. 2020 (2·N FLOPs per
token for N parameters); Pope et al., "Efficiently Scaling Transformer Inference", MLSys 2023.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from splitrl.profiles.formats import compute_dtype
from splitrl.profiles.launches import BLOCK_LAUNCHES, layer_launches, unit_launches
from splitrl.profiles.schema import Device, ModelArch
from splitrl.profiles.table_schema import BlockCost, CostTable
from splitrl.resources import data_dir

DEFAULT_CONTEXT_GRID = (64, 128, 256, 512, 1024, 2048, 4096)
FORMULA = ("time = max(2 * params / weight_flops(format) + other_flops / flops(activation dtype), bytes / "
           "(mem_bandwidth * efficiency.memory)) + launches * kernel_overhead_s / tokens_per_call; energy = time * "
           "power_w.active; weight_flops = peak_flops x efficiency.compute (int8/int4: peak_flops[quantized_matmul."
           "dtype] x efficiency.compute / quantized_matmul.slowdown); other_flops = 4 * heads * head_dim * keys "
           "(+ softmax/norm/activation terms); launches = the sublayer's kernels in the device's runtime on the "
           "attn_norm/ffn_norm unit, 0 on attention/FFN units, 1 per block; decode reads all unit weights once per "
           "token plus the KV cache; prefill of S tokens reads weights once per S tokens; keys = context (decode) "
           "or (S + 1) / 2 (causal prefill)")


def context_grid_for(model: ModelArch) -> np.ndarray:
    grid = [c for c in DEFAULT_CONTEXT_GRID if c <= model.max_context]
    return np.array(grid or [model.max_context], dtype=np.float64)


def _unit_flops(model: ModelArch, kind: str, params: float, keys: np.ndarray) -> tuple[float, np.ndarray]:
    """(FLOPs of the matmuls by the unit's weights, other FLOPs) for one token through one unit,
    given how many cached keys attention reads."""
    d = model.d_model
    if kind == "norm":
        return 0.0, np.full_like(keys, (8 if model.family == "gpt2" else 5) * d)
    if kind == "attn":
        h = model.heads_per_unit
        return 2 * params, 4 * h * model.head_dim * keys + 5 * h * keys
    if kind == "ffn":
        return 2 * params, np.full_like(keys, 8 * model.d_ff / model.ffn_chunks)
    raise ValueError(kind)


def _roofline(device: Device, weight_format: str, flops: tuple, nbytes, launches: float, tokens_per_call) -> np.ndarray:
    """Roofline time of one unit and token: `flops` = (weight matmul FLOPs, other FLOPs)."""
    w_flops, other_flops = flops
    compute = w_flops / device.weight_flops(weight_format) + other_flops / device.flops(compute_dtype(weight_format))
    return np.maximum(compute, nbytes / device.bandwidth) + launches * device.kernel_overhead_s / tokens_per_call


def analytic_costs(model: ModelArch, device: Device, weight_format: str,
                   context_grid: np.ndarray | None = None, calibration: dict | None = None) -> CostTable:
    """The cost table of `model` on `device` with weights in `weight_format`, by the roofline model.

    `calibration` (from a measurement on a host, see docs/profiles.md) maps a unit kind
    (norm/attn/ffn/embedding/final_norm/lm_head) to a factor {"prefill": x, "decode": y} that
    multiplies the roofline time; it is recorded in the table's provenance.
    """
    grid = context_grid_for(model) if context_grid is None else np.asarray(context_grid, dtype=np.float64)
    calibration = calibration or {}
    bpp, kvb = model.bytes_per_param[weight_format], model.kv_bytes_per_value
    layer_pre, layer_dec = _unit_times(model, device, weight_format, grid, calibration)   # [U, C] each
    L = model.n_layers   # every layer of a decoder stack is the same shape
    prefill_s = np.broadcast_to(layer_pre, (L,) + layer_pre.shape).copy()
    decode_s = np.broadcast_to(layer_dec, (L,) + layer_dec.shape).copy()
    weight_bytes = np.broadcast_to(model.unit_params() * bpp, (L, model.n_units)).copy()
    kv_bytes = np.broadcast_to(model.unit_kv_values_per_token() * kvb, (L, model.n_units)).copy()
    provenance = {
        "kind": "analytic",
        "formula": FORMULA,
        "sources": {"model": model.source, "device": device.source},
        "model_file": _data_relative(model.path), "device_file": _data_relative(device.path),
        "compute_dtype": compute_dtype(weight_format),
        "runtime": device.runtime,
        "launches_per_layer": layer_launches(model.family, device.runtime),
        "calibration": calibration or "none",
        "date": datetime.date.today().isoformat(),
    }
    return CostTable(
        model=model.name, device=device.name, weight_format=weight_format, context_grid=grid,
        unit_names=model.unit_names, prefill_s=prefill_s, decode_s=decode_s,
        prefill_j=prefill_s * device.power_active_w, decode_j=decode_s * device.power_active_w,
        weight_bytes=weight_bytes, kv_bytes_per_token=kv_bytes,
        blocks=_model_blocks(model, device, weight_format, grid, calibration), provenance=provenance,
    )


def _data_relative(path) -> str:
    """A profile file's path relative to the profiles directory (machine-independent provenance)."""
    try:
        return Path(path).resolve().relative_to(data_dir().resolve()).as_posix()
    except ValueError:   # a file outside the profiles directory: keep where it was
        return str(path)


def _scale(calibration: dict, kind: str, phase: str) -> float:
    return float(calibration.get(kind, {}).get(phase, 1.0))


def _act_bytes(weight_format: str) -> float:
    return 4.0 if compute_dtype(weight_format) == "fp32" else 2.0


def _unit_times(model: ModelArch, device: Device, weight_format: str, grid: np.ndarray, calibration: dict):
    """([U, C] prefill s/token, [U, C] decode s/token) of one layer's units over the context grid."""
    bpp, act, kvb = model.bytes_per_param[weight_format], _act_bytes(weight_format), model.kv_bytes_per_value
    launches = unit_launches(model.unit_names, model.family, device.runtime)
    pre_s, dec_s = [], []
    for kind, p, kv, n in zip(model.unit_kinds, model.unit_params(), model.unit_kv_values_per_token(), launches,
                              strict=True):
        io = 2 * model.d_model * act + kv * kvb  # read input, write output, write this token's K/V
        # prefill of S = grid tokens, per token
        keys_p = (grid + 1) / 2
        bytes_p = p * bpp / grid + io + keys_p * kv * kvb / np.maximum(grid / 64, 1)  # tiled K/V reuse
        pre_s.append(_roofline(device, weight_format, _unit_flops(model, kind, p, keys_p), bytes_p, n, grid)
                     * _scale(calibration, kind, "prefill"))
        # decode one token with `grid` tokens cached
        bytes_d = p * bpp + io + grid * kv * kvb
        dec_s.append(_roofline(device, weight_format, _unit_flops(model, kind, p, grid), bytes_d, n, 1.0)
                     * _scale(calibration, kind, "decode"))
    return np.stack(pre_s), np.stack(dec_s)


def _model_blocks(model: ModelArch, device: Device, weight_format: str, grid: np.ndarray,
                  calibration: dict) -> dict[str, BlockCost]:
    """The embedding, final norm and LM head, which run once per token outside the layers."""
    bpp, act = model.bytes_per_param[weight_format], _act_bytes(weight_format)
    bp, d = model.block_params(), model.d_model
    blocks = {}
    for name in ("embedding", "final_norm", "lm_head"):
        p = bp[name]
        if name == "embedding":       # a row lookup: reads d weights per token
            flops, nbytes_pre, nbytes_dec = (0.0, np.zeros_like(grid)), d * bpp + d * act, d * bpp + d * act
        elif name == "final_norm":
            flops = (0.0, np.full_like(grid, 5.0 * d))
            nbytes_pre = nbytes_dec = p * bpp / grid + 2 * d * act
        else:                         # logits for one token: a [d, vocab] GEMV
            flops = (2.0 * p, np.zeros_like(grid))
            nbytes_pre, nbytes_dec = p * bpp / grid + d * act, p * bpp + d * act
        n = BLOCK_LAUNCHES[name]
        pre = _roofline(device, weight_format, flops, nbytes_pre, n, grid) * _scale(calibration, name, "prefill")
        dec = _roofline(device, weight_format, flops, nbytes_dec, n, 1.0) * _scale(calibration, name, "decode")
        dec = np.broadcast_to(dec, grid.shape).astype(np.float64)
        blocks[name] = BlockCost(prefill_s=pre, decode_s=dec, prefill_j=pre * device.power_active_w,
                                 decode_j=dec * device.power_active_w, weight_bytes=p * bpp)
    return blocks
