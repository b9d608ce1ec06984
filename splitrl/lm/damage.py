"""What happens to the hidden state crossing the edge/cloud boundary: format, noise, packet loss.

The order is the order on a real link: the sender quantises (fp16 / int8 / int4), the channel adds
noise to what is sent, the receiver zero-fills what never arrived. These functions are the protocol
the split-inference runtime follows too; keep them in step with `splitrl/profiles/formats.py`.

Wire layout (one crossing tensor, shape [tokens, d_model], serialised token-major):
  fp16:       2 bytes per value.
  int8/int4:  per group of QUANT_GROUP values along d_model: [fp16 scale][payload], the payload 1 byte
              (int8) or half a byte (int4) per value; symmetric absmax quantisation, q in [-127, 127] or
              [-7, 7], value = q * scale. The last group of a row may be shorter.
The byte stream is cut into packets of `packet_bytes`; a packet is lost with probability `loss` (the
residual rate after the runtime's bounded retransmissions), independently. A value is lost when a
packet holding one of its bytes or one of its group's scale bytes is lost; a lost value becomes 0 in
the dequantised domain (what the runtime does: zero-fill, no concealment).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
import torch

from splitrl.profiles.formats import QUANT_GROUP, SCALE_BYTES, TX_BITS, TX_FORMATS

QMAX = {"int8": 127, "int4": 7}


@dataclasses.dataclass(frozen=True)
class Damage:
    """One damage setting of the crossing tensor. loss = 0 and snr_db = None mean none of that."""
    format: str = "fp16"
    loss: float = 0.0
    snr_db: float | None = None
    packet_bytes: int = 1024

    def __post_init__(self):
        if self.format not in TX_FORMATS:
            raise ValueError(f"transmission format {self.format!r} is unknown; choose one of {TX_FORMATS}")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"loss = {self.loss}: must be a residual packet-loss rate in [0, 1]")
        if self.packet_bytes < 2:
            raise ValueError(f"packet_bytes = {self.packet_bytes}: must be >= 2 (one fp16 value)")


def seeded_generator(*parts: object) -> torch.Generator:
    """A torch generator seeded by a stable hash of `parts`: the same cell and seed draw the same
    noise and losses in every run (resumed runs included), independent of measuring order."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def quantise(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantisation of x [..., d] (int8/int4) in groups of QUANT_GROUP along the last
    axis, the last group zero-padded: (q [..., G, QUANT_GROUP] integer values in x.dtype, in
    [-qmax, qmax]; scale [..., G, 1], fp16-rounded, in x.dtype). The value sent is q * scale. The
    runtime's wire format (splitrl/runtime/wire.py) serialises exactly these q and scales."""
    qmax = QMAX[fmt]
    d = x.shape[-1]
    pad = (-d) % QUANT_GROUP
    xp = torch.nn.functional.pad(x, (0, pad)) if pad else x
    g = xp.reshape(*xp.shape[:-1], -1, QUANT_GROUP)
    # The scale travels as fp16, so the receiver multiplies by the fp16-rounded scale.
    scale = (g.abs().amax(dim=-1, keepdim=True) / qmax).to(torch.float16).to(x.dtype)
    q = torch.where(scale > 0, torch.round(g / torch.where(scale > 0, scale, 1.0)), 0.0).clamp(-qmax, qmax)
    return q, scale


def quant_dequant(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """x as the receiver reconstructs it after sending it in `fmt` (float32 in, float32 out)."""
    if fmt == "fp16":
        return x.to(torch.float16).to(x.dtype)
    q, scale = quantise(x, fmt)
    d = x.shape[-1]
    out = (q * scale).reshape(*x.shape[:-1], -1)
    return out[..., :d] if out.shape[-1] != d else out


@functools.lru_cache(maxsize=32)
def value_byte_map(d_model: int, fmt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """For one row of d_model values: the byte offsets (within the row) of each value's first and last
    payload byte, of its group's scale, and the row length in bytes."""
    v = np.arange(d_model)
    if fmt == "fp16":
        first = 2 * v
        return first, first + 1, first, 2 * d_model
    per_value = TX_BITS[fmt] / 8
    group, j = v // QUANT_GROUP, v % QUANT_GROUP
    sizes = [SCALE_BYTES + int(np.ceil(min(QUANT_GROUP, d_model - s) * per_value)) for s in range(0, d_model, QUANT_GROUP)]
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    first = start[group] + SCALE_BYTES + np.floor(j * per_value).astype(np.int64)
    return first, first, start[group], int(sum(sizes))


def loss_mask(n_tokens: int, d_model: int, fmt: str, packet_bytes: int, loss: float,
              gen: torch.Generator) -> torch.Tensor:
    """Boolean [n_tokens, d_model]: True where a value was lost, for one crossing tensor."""
    first, last, scale, row = value_byte_map(d_model, fmt)
    n_packets = -(-n_tokens * row // packet_bytes)
    lost = torch.rand(n_packets, generator=gen) < loss
    base = torch.arange(n_tokens)[:, None] * row
    hit = torch.zeros(n_tokens, d_model, dtype=torch.bool)
    offsets = [first, last] if fmt == "fp16" else [first, last, scale, scale + 1]  # scale is 2 bytes
    for off in offsets:
        hit |= lost[(base + torch.as_tensor(off)[None, :]) // packet_bytes]
    return hit


def damage(x: torch.Tensor, dmg: Damage, gen: torch.Generator) -> torch.Tensor:
    """The crossing tensor x [..., tokens, d_model] as received: format, then noise, then loss.

    Noise is additive Gaussian with variance mean(s^2) / 10^(snr_db / 10), s the sent tensor (per
    leading index, i.e. per window). Each leading index is its own tensor on the wire.
    """
    out = quant_dequant(x, dmg.format)
    if dmg.snr_db is not None:
        power = out.pow(2).mean(dim=(-2, -1), keepdim=True)
        sigma = torch.sqrt(power / 10 ** (dmg.snr_db / 10))
        out = out + sigma * torch.randn(out.shape, generator=gen, dtype=out.dtype)
    if dmg.loss > 0:
        flat = out.reshape(-1, *out.shape[-2:])
        masks = torch.stack([loss_mask(t.shape[0], t.shape[1], dmg.format, dmg.packet_bytes, dmg.loss, gen)
                             for t in flat])
        out = flat.masked_fill(masks, 0.0).reshape(out.shape)
    return out
