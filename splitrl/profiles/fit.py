"""Memory fit of layer-level placements, and the bytes each boundary sends.

A placement with boundary k runs layers [0, k) on the edge and [k, L) on the cloud (k = 0 is
cloud-only, k = L edge-only). Each side holds the weights it runs plus the KV cache of its layers
for `context` tokens; the embedding sits with layer 0's side, the final norm and LM head with the
last layer's side (one copy when tied embeddings end up on the same side).
"""

from __future__ import annotations

import numpy as np

from splitrl.profiles.errors import ProfileError
from splitrl.profiles.formats import TOKEN_ID_BYTES, TX_FORMATS, tx_bytes_per_token
from splitrl.profiles.schema import Device, ModelArch


def layer_bytes(model: ModelArch, weight_format: str, context: int) -> float:
    """Weights plus KV cache (for `context` tokens) of one layer."""
    return float(model.unit_params().sum() * model.bytes_per_param[weight_format]
                 + model.unit_kv_values_per_token().sum() * model.kv_bytes_per_value * context)


def placement_memory(model: ModelArch, edge_format: str, cloud_format: str, context: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Bytes held on the edge and on the cloud for each boundary k = 0..L (arrays of length L+1)."""
    L = model.n_layers
    k = np.arange(L + 1)
    bp = model.block_params()
    head = bp["final_norm"] + bp["lm_head"]

    def side(n_layers, has_embedding, has_head, fmt):
        bpp = model.bytes_per_param[fmt]
        emb = np.where(has_embedding, bp["embedding"], 0.0)
        hd = np.where(has_head, head, 0.0)
        if model.tie_embeddings:  # the head reuses the embedding matrix when both are on this side
            hd = hd - np.where(has_embedding & has_head, bp["lm_head"], 0.0)
        return n_layers * layer_bytes(model, fmt, context) + (emb + hd) * bpp

    edge = side(k, k > 0, k == L, edge_format)
    cloud = side(L - k, k == 0, k < L, cloud_format)
    return edge, cloud


def feasible_boundaries(model: ModelArch, edge: Device, cloud: Device | None, edge_format: str,
                        cloud_format: str = "fp16", context: int = 2048) -> np.ndarray:
    """Boolean [L+1]: which boundaries fit both sides' memory (no cloud: only edge-only counts)."""
    e, c = placement_memory(model, edge_format, cloud_format, context)
    ok = e <= edge.memory_bytes
    if cloud is None:
        ok &= np.arange(model.n_layers + 1) == model.n_layers
    else:
        ok &= c <= cloud.memory_bytes
    return ok


def check_fit(model: ModelArch, edge: Device, cloud: Device | None, edge_formats: tuple[str, ...],
              cloud_format: str = "fp16", context: int = 2048) -> dict[str, np.ndarray]:
    """Feasible boundaries per edge weight format; a ProfileError if none fits in any format."""
    out = {f: feasible_boundaries(model, edge, cloud, f, cloud_format, context) for f in edge_formats}
    if not any(v.any() for v in out.values()):
        e, c = placement_memory(model, edge_formats[-1], cloud_format, context)
        if cloud is None:
            raise ProfileError(edge.path or edge.name, "memory_bytes", edge.memory_bytes,
                               f"model {model.name} does not fit device {edge.name} in any placement: edge-only "
                               f"needs {e[-1] / 1e9:.2f} GB in {edge_formats[-1]} at context {context}",
                               "give a cloud device, a smaller weight format or a shorter context")
        raise ProfileError(cloud.path or cloud.name, "memory_bytes", cloud.memory_bytes,
                           f"model {model.name} does not fit edge {edge.name} + cloud {cloud.name} in any "
                           f"placement (cloud-only needs {c[0] / 1e9:.2f} GB; edge-only needs "
                           f"{e[-1] / 1e9:.2f} GB on the edge)", "pick a bigger device or a smaller model")
    return out


def boundary_bytes_per_token(model: ModelArch) -> dict[str, np.ndarray]:
    """Bytes sent edge->cloud per token for each boundary k = 0..L and transmission format.

    k = 0 sends token ids, 0 < k < L the hidden state, k = L nothing (edge-only); the cloud always
    returns token ids (TOKEN_ID_BYTES per generated token), not counted here.
    """
    L = model.n_layers
    out = {}
    for fmt in TX_FORMATS:
        b = np.full(L + 1, tx_bytes_per_token(model.d_model, fmt))
        b[0], b[L] = TOKEN_ID_BYTES, 0.0
        out[fmt] = b
    return out
