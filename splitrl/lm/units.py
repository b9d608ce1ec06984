"""A Llama-family decoder layer cut into the placement units of `splitrl/profiles_data/models/*.yaml`.

Units of a layer: attn_norm, attn.0..A-1 (one per group of n_kv_heads/A KV heads with their query
heads and the matching columns of o_proj: a partial sum over d_model), ffn_norm, ffn.0..C-1 (a d_ff/C
slice of gate/up rows and down columns: a partial sum). The functional forms here are what the
runtime runs on each side, and what `profile_cost` times. Llama, Mistral, Qwen2, SmolLM and other
models with the same layer layout are supported; others get a clear error.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from splitrl.profiles.errors import ProfileError
from splitrl.profiles.formats import NOMINAL_BYTES_PER_PARAM
from splitrl.profiles.schema import MODEL_SCHEMA, ModelArch

ATTN_PARTS = {"q_proj", "k_proj", "v_proj", "o_proj"}
MLP_PARTS = {"gate_proj", "up_proj", "down_proj", "act_fn"}


class UnsupportedModelError(ValueError):
    pass


def decoder_layers(model) -> list:
    """The decoder layers of a Llama-family causal LM, or a clear error for other architectures."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    kind = type(model).__name__
    if layers is None or not len(layers):
        raise UnsupportedModelError(f"{kind} has no model.layers: only Llama-family decoders are supported")
    layer = layers[0]
    for part in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
        if not hasattr(layer, part):
            raise UnsupportedModelError(f"{kind} layers have no {part}: only Llama-family decoders are supported")
    attn = {n for n, _ in layer.self_attn.named_children()}
    mlp = {n for n, _ in layer.mlp.named_children()} | ({"act_fn"} if hasattr(layer.mlp, "act_fn") else set())
    if not ATTN_PARTS <= attn or attn - ATTN_PARTS - {"rotary_emb"} or not MLP_PARTS <= mlp:
        raise UnsupportedModelError(f"{kind}: attention parts {sorted(attn)}, MLP parts {sorted(mlp)}; "
                                    f"the unit split needs exactly {sorted(ATTN_PARTS)} and {sorted(MLP_PARTS)}")
    return list(layers)


# ---- the model's architecture file -------------------------------------------------------------
def arch_dict(config, name: str, source: str, attn_units: int | None = None, ffn_chunks: int = 4) -> dict:
    """A `splitrl.model/v1` document from a Hugging Face Llama-family config."""
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d = config.hidden_size
    return {
        "schema": MODEL_SCHEMA, "name": name, "display_name": name, "family": "llama",
        "n_layers": config.num_hidden_layers, "d_model": d, "n_heads": n_heads, "n_kv_heads": n_kv,
        "head_dim": getattr(config, "head_dim", None) or d // n_heads, "d_ff": config.intermediate_size,
        "vocab_size": config.vocab_size, "max_context": config.max_position_embeddings,
        "tie_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "attn_units": attn_units or n_kv, "ffn_chunks": ffn_chunks, "kv_bytes_per_value": 2.0,
        "bytes_per_param": dict(NOMINAL_BYTES_PER_PARAM),
        "source": {"config": f"Hugging Face config of {source}",
                   "derived_by": "splitrl-profiles measure (attn_units = n_kv_heads, ffn_chunks = 4 unless overridden)"},
    }


def resolve_arch(config, name: str, source: str, models_dir: Path, attn_units: int | None,
                 ffn_chunks: int) -> tuple[ModelArch, dict | None]:
    """The model's architecture: models/<name>.yaml when it exists (checked against the config), else
    derived from the config. Returns (arch, the document to write to arch.path, or None if it exists)."""
    from splitrl.profiles.store import load_model

    derived = arch_dict(config, name, source, attn_units, ffn_chunks)
    path = models_dir / f"{name}.yaml"
    if path.is_file():
        arch = load_model(str(path))
        for key in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size"):
            if getattr(arch, key) != derived[key]:
                raise ProfileError(path, key, getattr(arch, key), f"must match the model's config ({derived[key]})",
                                   "this file describes another model: rename the model or fix the file")
        return arch, None
    try:
        arch = ModelArch.from_dict(derived, path)
    except ProfileError as exc:
        raise ProfileError(path, exc.field, exc.value, exc.expected,
                           "choose --attn-units (a divisor of n_kv_heads) and --ffn-chunks (a divisor of d_ff)") from exc
    return arch, derived


# ---- unit weights ------------------------------------------------------------------------------
def _rows(linear, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    b = linear.bias[lo:hi].contiguous() if linear.bias is not None else None
    return linear.weight[lo:hi].contiguous(), b


def attn_unit_weights(layer, arch: ModelArch, u: int) -> dict:
    """Weights of attention unit u: its query heads, KV heads, and o_proj columns (own copies, so a
    unit runs exactly the GEMMs it would on its own device)."""
    hd, hq, hkv = arch.head_dim, arch.heads_per_unit, arch.kv_heads_per_unit
    a = layer.self_attn
    wq, bq = _rows(a.q_proj, u * hq * hd, (u + 1) * hq * hd)
    wk, bk = _rows(a.k_proj, u * hkv * hd, (u + 1) * hkv * hd)
    wv, bv = _rows(a.v_proj, u * hkv * hd, (u + 1) * hkv * hd)
    wo = a.o_proj.weight[:, u * hq * hd:(u + 1) * hq * hd].contiguous()
    # o_proj's bias (if any) is added once per layer: give it to unit 0 so the partial sums add up.
    bo = a.o_proj.bias if (a.o_proj.bias is not None and u == 0) else None
    return dict(wq=wq, bq=bq, wk=wk, bk=bk, wv=wv, bv=bv, wo=wo, bo=bo, hq=hq, hkv=hkv, hd=hd, scale=a.scaling)


def ffn_unit_weights(layer, arch: ModelArch, c: int) -> dict:
    n = arch.d_ff // arch.ffn_chunks
    m = layer.mlp
    wg, bg = _rows(m.gate_proj, c * n, (c + 1) * n)
    wu, bu = _rows(m.up_proj, c * n, (c + 1) * n)
    wd = m.down_proj.weight[:, c * n:(c + 1) * n].contiguous()
    bd = m.down_proj.bias if (m.down_proj.bias is not None and c == 0) else None
    return dict(wg=wg, bg=bg, wu=wu, bu=bu, wd=wd, bd=bd, act=m.act_fn)


def weight_bytes(w: dict) -> int:
    return sum(t.numel() * t.element_size() for t in w.values() if isinstance(t, torch.Tensor))


# ---- functional units --------------------------------------------------------------------------
def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _qkv(x, w, cos, sin):
    b, s, _ = x.shape
    q = F.linear(x, w["wq"], w["bq"]).view(b, s, w["hq"], w["hd"]).transpose(1, 2)
    k = F.linear(x, w["wk"], w["bk"]).view(b, s, w["hkv"], w["hd"]).transpose(1, 2)
    v = F.linear(x, w["wv"], w["bv"]).view(b, s, w["hkv"], w["hd"]).transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return _rope(q, cos, sin), _rope(k, cos, sin), v


def attn_unit_prefill(x: torch.Tensor, w: dict, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Causal attention of one unit over x [B, S, d] (already normed); partial sum [B, S, d]."""
    q, k, v = _qkv(x, w, cos, sin)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=w["scale"], enable_gqa=w["hq"] != w["hkv"])
    return F.linear(o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1), w["wo"], w["bo"])


def attn_unit_decode(x: torch.Tensor, w: dict, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, pos: int) -> torch.Tensor:
    """One decode token x [B, 1, d] attending to `pos` cached tokens plus itself. The caches
    [B, hkv, >pos, hd] are preallocated; the token's K/V are written at `pos`."""
    q, k, v = _qkv(x, w, cos, sin)
    k_cache[:, :, pos:pos + 1] = k
    v_cache[:, :, pos:pos + 1] = v
    o = F.scaled_dot_product_attention(q, k_cache[:, :, :pos + 1], v_cache[:, :, :pos + 1], scale=w["scale"],
                                       enable_gqa=w["hq"] != w["hkv"])
    return F.linear(o.transpose(1, 2).reshape(x.shape[0], 1, -1), w["wo"], w["bo"])


def ffn_unit(x: torch.Tensor, w: dict) -> torch.Tensor:
    """SwiGLU on one d_ff slice: partial sum [B, S, d]."""
    return F.linear(w["act"](F.linear(x, w["wg"], w["bg"])) * F.linear(x, w["wu"], w["bu"]), w["wd"], w["bd"])


def head_mask(arch: ModelArch, units: list[int], dtype=torch.float32) -> torch.Tensor:
    """[n_heads * head_dim] mask of the o_proj input columns owned by attention `units`."""
    m = torch.zeros(arch.n_heads * arch.head_dim, dtype=dtype)
    span = arch.heads_per_unit * arch.head_dim
    for u in units:
        m[u * span:(u + 1) * span] = 1
    return m
