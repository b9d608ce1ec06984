"""The analytic cost model, memory fit and shipped files tell a consistent story."""

import json

import numpy as np
import pytest

from splitrl.profiles import (
    analytic_costs,
    boundary_bytes_per_token,
    feasible_boundaries,
    load_costs,
    load_device,
    load_model,
    placement_memory,
)
from splitrl.profiles.cli import SHIPPED_ANALYTIC, analytic_table, main, validate_tree
from splitrl.profiles.fit import layer_bytes
from splitrl.profiles.schema import Device
from splitrl.profiles.table_schema import CostTable

from .conftest import DATA

PUBLISHED_PARAMS = {"smollm2-135m": 134_515_008, "gpt2-xl": 1_557_611_200, "llama-2-7b": 6_738_415_616,
                    "llama-2-13b": 13_015_864_320}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_sub_blocks_add_up_to_the_published_model(name):
    assert load_model(name).total_params() == PUBLISHED_PARAMS[name]


def test_layer_cost_is_the_sum_of_its_units_and_each_unit_is_priced():
    m, d = load_model("smollm2-135m"), load_device("raspberry-pi-5")
    t = analytic_costs(m, d, "fp16")
    np.testing.assert_allclose(t.layer_s("decode"), t.decode_s.sum(axis=1))
    # Decode is memory-bound: a layer streams its weights once, so layer time >= bytes / bandwidth.
    layer_weights = m.unit_params().sum() * 2.0
    assert (t.layer_s("decode")[0] >= layer_weights / d.bandwidth).all()
    assert (t.decode_s > 0).all() and (t.prefill_s > 0).all()


def test_costs_grow_with_context():
    for name in PUBLISHED_PARAMS:
        t = analytic_costs(load_model(name), load_device("jetson-orin-nx-16gb"), "fp16")
        attn = [i for i, k in enumerate(load_model(name).unit_kinds) if k == "attn"]
        assert (np.diff(t.decode_s[:, attn, :], axis=-1) > 0).all()
        assert (np.diff(t.layer_s("decode"), axis=-1) > 0).all()
        # Prefill per token first falls (weights and launches amortised over more tokens), so what must grow
        # is the time to prefill the whole sequence, and the per-token attention cost once it dominates.
        assert (np.diff(t.prefill_s * t.context_grid, axis=-1) > 0).all()
        long = t.context_grid >= 1024
        assert (np.diff(t.prefill_s[:, attn][..., long], axis=-1) > 0).all()


def test_costs_grow_with_model_size():
    dev = load_device("jetson-orin-nx-16gb")
    totals = []
    for name in ("smollm2-135m", "gpt2-xl", "llama-2-7b", "llama-2-13b"):
        t = analytic_costs(load_model(name), dev, "fp16", context_grid=np.array([512.0]))
        totals.append(t.decode_s.sum() + sum(b.decode_s[0] for b in t.blocks.values()))
    assert np.all(np.diff(totals) > 0), totals


def test_int4_weights_take_a_quarter_of_fp16():
    m = load_model("llama-2-7b")
    dev = load_device("raspberry-pi-5")
    fp16, int4 = analytic_costs(m, dev, "fp16"), analytic_costs(m, dev, "int4")
    np.testing.assert_allclose(int4.weight_bytes, fp16.weight_bytes / 4)
    assert layer_bytes(m, "int4", 0) == pytest.approx(layer_bytes(m, "fp16", 0) / 4)
    # and decode gets faster on a memory-bound device
    assert int4.decode_s.sum() < fp16.decode_s.sum()


@pytest.mark.parametrize("device,int8_vs_fp16,int4_vs_fp16", [
    ("raspberry-pi-5", 1.25, 2.0),        # SDOT at 614 GOPS / 2.5 and / 4 against FMLA fp16 at 307 GFLOP/s
    ("jetson-orin-nx-16gb", 1.0, 1.0),    # a GPU dequantises in the GEMM's load path
])
def test_quantized_matmuls_pay_for_dequantisation_where_the_device_does(device, int8_vs_fp16, int4_vs_fp16):
    """Prefill of 4096 tokens is compute-bound; an FFN unit's time follows the device's matmul rate per format."""
    m, d = load_model("llama-2-7b"), load_device(device)
    grid = np.array([4096.0])
    ffn = m.unit_names.index("ffn.0")
    t = {f: analytic_costs(m, d, f, grid).prefill_s[0, ffn, 0] for f in ("fp16", "int8", "int4")}
    assert t["int8"] / t["fp16"] == pytest.approx(int8_vs_fp16, rel=0.01)
    assert t["int4"] / t["fp16"] == pytest.approx(int4_vs_fp16, rel=0.01)
    w = 2 * m.unit_params()[ffn]   # the weight matmul dominates: 2 FLOP per weight
    rate_int4 = d.peak_flops[d.quantized_matmul["int4"][0]] * d.compute_efficiency / d.quantized_matmul["int4"][1]
    assert t["int4"] == pytest.approx(w / rate_int4, rel=0.01)


def test_pi_memory_efficiency_is_its_copy_measurement():
    """tinymembench copies 5.56 GB/s on the 8 GB Pi 5: 11.1 GB/s of traffic of a 17.07 GB/s peak."""
    assert load_device("raspberry-pi-5").memory_efficiency == pytest.approx(2 * 5.56e9 / 17.07e9, abs=0.005)


def test_placement_memory_accounts_everything_once():
    m = load_model("smollm2-135m")
    edge, cloud = placement_memory(m, "fp16", "fp16", context=0)
    # cloud-only and edge-only hold the whole model once (tied embeddings shared)
    assert edge[-1] == pytest.approx(m.total_params() * 2) and cloud[0] == pytest.approx(m.total_params() * 2)
    assert edge[0] == 0 and cloud[-1] == 0
    assert (np.diff(edge) > 0).all() and (np.diff(cloud) < 0).all()


def test_13b_does_not_fit_the_pi_in_fp16_but_int4_placements_do():
    m, pi, a100 = load_model("llama-2-13b"), load_device("raspberry-pi-5"), load_device("a100-80gb")
    fp16 = feasible_boundaries(m, pi, a100, "fp16", context=512)
    int4 = feasible_boundaries(m, pi, a100, "int4", context=512)
    assert not fp16[-1] and not int4[-1]          # edge-only never fits 6.5 GB
    assert fp16[0] and int4.sum() > 2 * fp16.sum()  # int4 fits many more layers on the Pi


def test_show_cli_on_the_done_when_example(capsys):
    assert main(["show", "llama-2-13b", "raspberry-pi-5", "--cloud", "a100-80gb"]) == 0
    out = capsys.readouterr().out
    assert "Memory fit" in out and "int4" in out and "edge-only fits" in out


def test_boundary_bytes():
    m = load_model("smollm2-135m")
    b = boundary_bytes_per_token(m)
    assert b["fp16"][5] == 576 * 2 and b["int8"][5] == 576 + 9 * 2 and b["int4"][5] == 288 + 9 * 2
    assert b["fp16"][0] == 4 and b["fp16"][-1] == 0


def test_every_shipped_file_validates():
    assert validate_tree(DATA) == []


def test_shipped_analytic_tables_are_reproducible():
    """The shipped analytic tables are what the code computes from the shipped model/device files."""
    for model, device, fmt in SHIPPED_ANALYTIC:
        m = load_model(model)
        shipped = load_costs(m, device, fmt, "analytic")
        fresh = CostTable.from_dict(json.loads(json.dumps(analytic_table(model, device, fmt).to_dict())), m)
        for key in ("prefill_s", "decode_s", "prefill_j", "decode_j", "weight_bytes", "kv_bytes_per_token"):
            np.testing.assert_allclose(getattr(shipped, key), getattr(fresh, key), rtol=1e-4, err_msg=f"{model} {device}")


def test_host_description_is_a_valid_device():
    from splitrl.profiles.host import describe_host
    d = Device.from_dict(describe_host(), "<host>")
    assert d.peak_flops["fp32"] > 1e9 and d.mem_bandwidth > 1e8 and d.memory_bytes > 1e8
