"""Number formats: how weights are stored and how boundary activations are sent.

These are protocol constants shared by the profiler, the simulator and the runtime: changing one
changes what the PPL tables measured, so they live here, not in a config.
"""

from __future__ import annotations

# Formats a model's weights may be stored in on a device (nominal bytes per parameter; quantisation
# scales are a few percent and are ignored, so int4 is exactly a quarter of fp16).
WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4")
NOMINAL_BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}

# Formats the boundary activations may cross the network in (the manager's choice).
TX_FORMATS = ("fp16", "int8", "int4")
TX_BITS = {"fp16": 16, "int8": 8, "int4": 4}
# int8/int4 are symmetric absmax quantisation in groups of QUANT_GROUP values along d_model, one fp16
# scale per group (the same as the harness's wire format and the PPL measurement).
QUANT_GROUP = 64
SCALE_BYTES = 2

# What crosses when nothing runs on the edge (cloud-only) or when the answer comes back: token ids.
TOKEN_ID_BYTES = 4


def tx_bytes_per_token(d_model: int, fmt: str) -> float:
    """Bytes one token's hidden vector takes on the wire in transmission format `fmt`."""
    if fmt not in TX_BITS:
        raise ValueError(f"transmission format {fmt!r} is unknown; choose one of {TX_FORMATS}")
    payload = d_model * TX_BITS[fmt] / 8
    if fmt == "fp16":
        return payload
    groups = -(-d_model // QUANT_GROUP)
    return payload + groups * SCALE_BYTES


def compute_dtype(weight_format: str) -> str:
    """The arithmetic of the activations (norms, attention scores, activations) for a weight format:
    int8/int4 are weight-only quantisation, so the activations stay fp16. The matmul by int8/int4
    weights runs at the rate each device states (`Device.quantized_matmul`)."""
    return {"fp32": "fp32", "fp16": "fp16", "int8": "fp16", "int4": "fp16"}[weight_format]
