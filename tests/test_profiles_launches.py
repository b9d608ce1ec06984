"""Kernel launches are charged per sublayer and side, so decode sits on the bandwidth roofline."""

import dataclasses

import numpy as np
import pytest

from splitrl.profiles import analytic_costs, load_device, load_model
from splitrl.profiles.cli import SHIPPED_ANALYTIC, analytic_table
from splitrl.profiles.launches import SUBLAYER_LAUNCHES, layer_launches

CONTEXT = 512
LARGE = ("gpt2-xl", "llama-2-7b", "llama-2-13b")   # >= 1 B parameters
DEVICES = sorted({d for _, d, _ in SHIPPED_ANALYTIC})
FORMATS = {d: sorted({f for _, dd, f in SHIPPED_ANALYTIC if dd == d}) for d in DEVICES}
DEVICE_FORMATS = [(d, f) for d in DEVICES for f in FORMATS[d]]


def decode_per_token(table) -> float:
    """Seconds of one decode token (batch 1) through every layer and block at CONTEXT cached tokens."""
    i = int(np.flatnonzero(table.context_grid == CONTEXT)[0])
    return float(table.decode_s[:, :, i].sum() + sum(b.decode_s[i] for b in table.blocks.values()))


def bandwidth_roofline(model, device, fmt) -> float:
    """(weight bytes + KV bytes read) / attainable bandwidth, for one decode token (Williams et al. 2009)."""
    bpp = model.bytes_per_param[fmt]
    blocks = model.block_params()
    weights = (model.unit_params().sum() * model.n_layers + blocks["lm_head"] + blocks["final_norm"]
               + model.d_model) * bpp   # the embedding reads one row
    kv = model.unit_kv_values_per_token().sum() * model.n_layers * CONTEXT * model.kv_bytes_per_value
    return (weights + kv) / (device.mem_bandwidth * device.memory_efficiency)


def test_every_shipped_device_and_format_is_covered():
    assert {"a100-80gb", "h100-80gb", "jetson-orin-nx-16gb", "galaxy-s23", "raspberry-pi-5"} <= set(DEVICES)
    assert FORMATS["raspberry-pi-5"] == ["fp16", "int4", "int8"] and FORMATS["a100-80gb"] == ["fp16"]


@pytest.mark.parametrize("device,fmt", DEVICE_FORMATS)
@pytest.mark.parametrize("model", LARGE)
def test_large_model_decode_is_within_1_5x_of_the_bandwidth_roofline(model, device, fmt):
    m, d = load_model(model), load_device(device)
    ratio = decode_per_token(analytic_table(model, device, fmt)) / bandwidth_roofline(m, d, fmt)
    assert 1.0 <= ratio <= 1.5, f"{model} on {device} in {fmt}: decode is {ratio:.2f} x the bandwidth roofline"


@pytest.mark.parametrize("device,fmt", [(d, f) for _, d, f in SHIPPED_ANALYTIC if _ == "smollm2-135m"])
def test_small_model_decode_is_at_least_its_launch_floor(device, fmt):
    """SmolLM2-135M is launch-bound: every layer launches its kernels on one side at least once."""
    m, d = load_model("smollm2-135m"), load_device(device)
    floor = m.n_layers * layer_launches(m.family, d.runtime) * d.kernel_overhead_s
    assert decode_per_token(analytic_table("smollm2-135m", device, fmt)) >= floor > 0


@pytest.mark.parametrize("device", ["a100-80gb", "h100-80gb"])
def test_small_model_is_launch_bound_on_the_clouds(device):
    m, d = load_model("smollm2-135m"), load_device(device)
    floor = m.n_layers * layer_launches(m.family, d.runtime) * d.kernel_overhead_s
    assert floor > bandwidth_roofline(m, d, "fp16")   # 0.30 ms of launches against 0.17 ms (A100) of bytes


@pytest.mark.parametrize("model", ["llama-2-7b", "gpt2-xl"])
@pytest.mark.parametrize("device", ["a100-80gb", "galaxy-s23", "this-host"])
def test_launches_sit_on_the_norm_units_once_per_sublayer(model, device):
    """The attention and FFN units carry no launches; attn_norm / ffn_norm carry their sublayer's."""
    m, d = load_model(model), load_device(device)
    grid = np.array([float(CONTEXT)])
    with_launches = analytic_costs(m, d, "fp16", grid)
    without = analytic_costs(m, dataclasses.replace(d, kernel_overhead_s=0.0), "fp16", grid)
    extra = (with_launches.decode_s - without.decode_s)[0, :, 0]
    per = SUBLAYER_LAUNCHES[d.runtime][m.family]
    expected = {"attn_norm": per["attn"], "ffn_norm": per["ffn"]}
    for name, seconds in zip(m.unit_names, extra, strict=True):
        assert seconds == pytest.approx(expected.get(name, 0) * d.kernel_overhead_s, abs=1e-12), name
    # a layer pays its launches once, not once per unit (the old model charged 82 for LLaMA-7B)
    assert extra.sum() == pytest.approx(layer_launches(m.family, d.runtime) * d.kernel_overhead_s)


def test_launch_counts_of_the_modelled_runtimes():
    assert layer_launches("llama", "vllm") == 10 and layer_launches("gpt2", "vllm") == 11
    assert layer_launches("llama", "llama.cpp") == 20 and layer_launches("gpt2", "llama.cpp") == 20
    assert layer_launches("llama", "pytorch-eager") == 36
