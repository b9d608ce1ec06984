"""Kernel launches: how many kernels one pass of a token through a sublayer launches, per runtime.

A launch costs `kernel_overhead_s` of the device (the part of a launch that does not overlap the
previous kernel's work). It is charged per *sublayer and side*, not per placement unit: a side that
runs any unit of a sublayer runs that sublayer's whole kernel sequence (norm, projections, attention
or activation, residual add) once, however many heads or FFN columns it holds. The env charges a
layer's norm unit (`attn_norm`, `ffn_norm`) to a side exactly when that side runs a unit of the
norm's sublayer, so the sublayer's launches sit on its norm unit and none on the attention/FFN units:
a sublayer split over both sides pays them on both sides, a whole sublayer once.

Counts are the kernels (operations that do work; views and reshapes are free) of one decode token:

llama.cpp (edge: CPU, CUDA and OpenCL backends) - the ggml graph of src/models/llama.cpp and
    src/models/gpt2.cpp in ggml-org/llama.cpp, with flash attention:
    llama attention: rms_norm, mul (norm weight), q, k, v mul_mat, rope q, rope k, store K, store V,
        flash_attn_ext, o mul_mat, residual add = 12
    llama FFN: rms_norm, mul, gate and up mul_mat, silu, mul, down mul_mat, residual add = 8
    gpt2 attention: norm, mul, add (LayerNorm weight and bias), qkv mul_mat, bias add, store K,
        store V, flash_attn_ext, o mul_mat, bias add, residual add = 11
    gpt2 FFN: norm, mul, add, up mul_mat, bias add, gelu, down mul_mat, bias add, residual add = 9
vllm (cloud) - vllm/model_executor/models/llama.py and gpt2.py in vllm-project/vllm:
    llama attention: fused-add RMSNorm, qkv_proj, rotary, reshape_and_cache, attention, o_proj = 6
    llama FFN: fused-add RMSNorm, gate_up_proj, SiLU-and-mul, down_proj = 4
    gpt2 attention: LayerNorm, c_attn, reshape_and_cache, attention, c_proj, residual add = 6
    gpt2 FFN: LayerNorm, c_fc, gelu, c_proj, residual add = 5
pytorch-eager (the measuring host, splitrl/lm/units.py on Hugging Face modules) - counted with
    torch.profiler (torch 2.13, transformers 5.23, CPU): the top-level aten operations that do work
    in one decode token of LlamaDecoderLayer / GPT2Block, plus the two KV-cache appends:
    llama attention: RMSNorm (pow, mean, add, rsqrt, mul, mul), q, k, v, rotary (mul x4, neg x2,
        cat x2, add x2), sdpa, o, residual add, K and V append = 24
    llama FFN: RMSNorm (6), gate, up, silu, mul, down, residual add = 12
    gpt2 attention: layer_norm, c_attn addmm, sdpa, c_proj addmm, residual add, K and V append = 7
    gpt2 FFN: layer_norm, c_fc addmm, gelu_new (mul x4, pow, add x2, tanh), c_proj addmm, add = 12
The embedding lookup, the final norm and the LM head are one kernel each in every runtime (vLLM and
the eager host fuse or run them as one op; llama.cpp's final norm is 2-3 ops, under one layer's
launches in every model shipped).
"""

from __future__ import annotations

import numpy as np

SUBLAYER_LAUNCHES = {
    "llama.cpp": {"llama": {"attn": 12, "ffn": 8}, "gpt2": {"attn": 11, "ffn": 9}},
    "vllm": {"llama": {"attn": 6, "ffn": 4}, "gpt2": {"attn": 6, "ffn": 5}},
    "pytorch-eager": {"llama": {"attn": 24, "ffn": 12}, "gpt2": {"attn": 7, "ffn": 12}},
}
RUNTIMES = tuple(SUBLAYER_LAUNCHES)
BLOCK_LAUNCHES = {"embedding": 1, "final_norm": 1, "lm_head": 1}


def unit_launches(unit_names: tuple[str, ...], family: str, runtime: str) -> np.ndarray:
    """Launches charged to each placement unit of a layer, [U]: a sublayer's on its norm unit, 0 elsewhere."""
    per = SUBLAYER_LAUNCHES[runtime][family]
    return np.array([per["attn"] if n == "attn_norm" else per["ffn"] if n == "ffn_norm" else 0
                     for n in unit_names], dtype=np.float64)


def layer_launches(family: str, runtime: str) -> int:
    """Launches of one whole layer on one side (both sublayers)."""
    per = SUBLAYER_LAUNCHES[runtime][family]
    return per["attn"] + per["ffn"]
