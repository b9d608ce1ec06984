"""Boundary activations <-> bytes in the transmission formats, with the profiler's quantiser.

Layout (splitrl/lm/damage.py documents it; the PPL tables were measured with it): a tensor of
shape [..., d] is serialised row-major, row by row:
  fp16:       2 bytes per value (little-endian IEEE half).
  int8/int4:  per group of QUANT_GROUP values along d: [fp16 scale][payload]; the payload is one
              byte per value (int8, two's complement) or two values per byte (int4, the even value in
              the low nibble); the last group of a row may be shorter. value = q * scale.
`decode(encode(x, fmt), fmt, shape)` equals `damage.quant_dequant(x, fmt)` bit for bit (tested).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from splitrl.lm.damage import quant_dequant, quantise
from splitrl.profiles.formats import QUANT_GROUP, SCALE_BYTES, TX_BITS, TX_FORMATS


class WireError(ValueError):
    pass


def row_bytes(d: int, fmt: str) -> int:
    """Bytes of one row of d values in `fmt` (equals formats.tx_bytes_per_token for even groups).
    Closed form (full groups + the short last one): d may come from a peer, so no loop over it."""
    if fmt == "fp16":
        return 2 * d
    per = TX_BITS[fmt]
    full, rest = divmod(d, QUANT_GROUP)
    last = SCALE_BYTES + (rest * per + 7) // 8 if rest else 0
    return full * (SCALE_BYTES + (QUANT_GROUP * per + 7) // 8) + last


def nbytes(shape: tuple[int, ...], fmt: str) -> int:
    """Exact Python-integer arithmetic: a peer's shape cannot overflow it."""
    rows = math.prod(int(s) for s in shape[:-1]) if len(shape) > 1 else 1
    return rows * row_bytes(int(shape[-1]), fmt)


def _groups_to_rows(blocks: np.ndarray, d: int, sizes: list[int]) -> np.ndarray:
    """[R, G, W] uint8 blocks (W = the widest group's bytes) -> [R, row_bytes] with the last group cut."""
    r, g, w = blocks.shape
    if sizes[-1] == w:
        return blocks.reshape(r, g * w)
    return np.concatenate([blocks[:, :-1].reshape(r, (g - 1) * w), blocks[:, -1, : sizes[-1]]], axis=1)


def encode(x: torch.Tensor, fmt: str) -> bytes:
    """x [..., d] float -> the bytes that cross the link in `fmt`."""
    if fmt not in TX_FORMATS:
        raise WireError(f"format {fmt!r} is unknown; choose one of {TX_FORMATS}")
    x = x.detach().to(torch.float32)
    d = x.shape[-1]
    if fmt == "fp16":
        return x.to(torch.float16).numpy().astype("<f2").tobytes()
    q, scale = quantise(x.reshape(-1, d), fmt)                      # [R, G, Q], [R, G, 1]
    scale_b = scale.to(torch.float16).numpy().astype("<f2").view(np.uint8)   # [R, G, 2]
    qi = q.to(torch.int8).numpy()
    if fmt == "int8":
        payload = qi.view(np.uint8)                                  # [R, G, Q]
    else:
        nib = (qi.astype(np.uint8) & 0x0F)
        payload = nib[..., 0::2] | (nib[..., 1::2] << 4)             # [R, G, Q/2]
    blocks = np.concatenate([scale_b, payload], axis=-1)
    sizes = [SCALE_BYTES + (min(QUANT_GROUP, d - s) * TX_BITS[fmt] + 7) // 8 for s in range(0, d, QUANT_GROUP)]
    return np.ascontiguousarray(_groups_to_rows(blocks, d, sizes)).tobytes()


def decode(data: bytes | memoryview, fmt: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The bytes of `encode` -> float32 tensor of `shape` (what the receiver computes with)."""
    if fmt not in TX_FORMATS:
        raise WireError(f"format {fmt!r} is unknown; choose one of {TX_FORMATS}")
    shape = tuple(int(s) for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise WireError(f"shape {shape}: every dimension must be positive")
    want = nbytes(shape, fmt)
    if len(data) != want:
        raise WireError(f"{fmt} tensor of shape {shape} needs {want} bytes, got {len(data)}")
    buf = np.frombuffer(data, dtype=np.uint8)
    d = shape[-1]
    if fmt == "fp16":
        return torch.from_numpy(buf.view("<f2").astype(np.float32).reshape(shape))
    rows = buf.reshape(-1, row_bytes(d, fmt))
    r = rows.shape[0]
    g = -(-d // QUANT_GROUP)
    width = SCALE_BYTES + QUANT_GROUP * TX_BITS[fmt] // 8
    pad = g * width - rows.shape[1]
    blocks = (np.concatenate([rows, np.zeros((r, pad), np.uint8)], axis=1) if pad else rows).reshape(r, g, width)
    scale = torch.from_numpy(np.ascontiguousarray(blocks[..., :SCALE_BYTES]).view("<f2").astype(np.float32))
    payload = blocks[..., SCALE_BYTES:]
    if fmt == "int8":
        q = payload.view(np.int8).astype(np.float32)
    else:
        lo, hi = payload & 0x0F, payload >> 4
        nib = np.stack([lo, hi], axis=-1).reshape(r, g, QUANT_GROUP).astype(np.int8)
        q = np.where(nib > 7, nib - 16, nib).astype(np.float32)
    out = (torch.from_numpy(q) * scale).reshape(r, g * QUANT_GROUP)[:, :d]
    return out.reshape(shape).contiguous()


def roundtrip(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """What the receiver gets for x: decode(encode(x)). Same as damage.quant_dequant."""
    return decode(encode(x, fmt), fmt, tuple(x.shape))


__all__ = ["WireError", "decode", "encode", "nbytes", "quant_dequant", "roundtrip", "row_bytes"]
