"""Every bad profile input gives one clear error naming the file and the field."""

import json
import math

import pytest
import yaml

from splitrl.profiles import ProfileError, check_fit, load_costs, load_device, load_model, load_ppl
from splitrl.profiles.store import load_costs_file
from splitrl.profiles.table_schema import PPLTable

COSTS = "costs/analytic/smollm2-135m__this-host__fp32.json"


def _edit_yaml(path, **changes):
    doc = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        node, *rest = key.split(".")
        if rest:
            doc[node][rest[0]] = value
        elif value is None:
            del doc[node]
        else:
            doc[node] = value
    path.write_text(yaml.safe_dump(doc))


def _raises(fn, *fragments):
    with pytest.raises(ProfileError) as err:
        fn()
    for frag in fragments:
        assert frag in str(err.value), f"{frag!r} not in {err.value}"
    return err.value


def test_missing_field_names_file_and_field(data_copy):
    _edit_yaml(data_copy / "models/smollm2-135m.yaml", d_ff=None)
    e = _raises(lambda: load_model("smollm2-135m", data_copy), "smollm2-135m.yaml", "d_ff", "missing")
    assert e.field == "d_ff"


def test_heads_not_dividing_d_model(data_copy):
    _edit_yaml(data_copy / "models/smollm2-135m.yaml", n_heads=7, n_kv_heads=7, attn_units=7)
    _raises(lambda: load_model("smollm2-135m", data_copy), "smollm2-135m.yaml", "n_heads = 7", "divide d_model = 576")


def test_attn_units_must_hold_whole_kv_groups(data_copy):
    _edit_yaml(data_copy / "models/smollm2-135m.yaml", attn_units=2)
    _raises(lambda: load_model("smollm2-135m", data_copy), "attn_units = 2", "n_kv_heads = 3")


def test_unknown_field_is_an_error_not_ignored(data_copy):
    _edit_yaml(data_copy / "models/smollm2-135m.yaml", n_layer=30)
    _raises(lambda: load_model("smollm2-135m", data_copy), "n_layer", "unknown field")


def test_unknown_model_and_device_list_the_known_ones(data_copy):
    _raises(lambda: load_model("gpt5", data_copy), "gpt5", "unknown model", "smollm2-135m")
    _raises(lambda: load_device("pi9", data_copy), "pi9", "unknown device", "raspberry-pi-5")


@pytest.mark.parametrize("field,value,expect", [
    ("mem_bandwidth", -1.0, ">"),
    ("memory_bytes", float("nan"), "finite"),
    ("peak_flops.fp32", "fast", "number"),
    ("power_w.active", 0.0, ">"),
    ("efficiency.compute", 1.5, "<= 1"),
])
def test_bad_device_numbers(data_copy, field, value, expect):
    _edit_yaml(data_copy / "devices/raspberry-pi-5.yaml", **{field: value})
    _raises(lambda: load_device("raspberry-pi-5", data_copy), "raspberry-pi-5.yaml", field, expect)


def test_device_runtime_must_be_a_modelled_one(data_copy):
    _edit_yaml(data_copy / "devices/raspberry-pi-5.yaml", runtime="tensorrt")
    _raises(lambda: load_device("raspberry-pi-5", data_copy), "raspberry-pi-5.yaml", "runtime", "llama.cpp")


def test_a_v1_device_file_is_told_what_v2_adds(data_copy):
    _edit_yaml(data_copy / "devices/raspberry-pi-5.yaml", schema="splitrl.device/v1")
    _raises(lambda: load_device("raspberry-pi-5", data_copy), "raspberry-pi-5.yaml", "schema", "v2 adds runtime, quantized_matmul and radio")


def test_quantized_matmul_must_name_a_dtype_the_device_has(data_copy):
    _edit_yaml(data_copy / "devices/galaxy-s23.yaml", **{"quantized_matmul.int4": {"dtype": "int8", "slowdown": 1.0}})
    _raises(lambda: load_device("galaxy-s23", data_copy), "galaxy-s23.yaml", "quantized_matmul.int4.dtype",
            "peak_flops entry")


def test_quantized_matmul_cannot_be_faster_than_its_dtype(data_copy):
    _edit_yaml(data_copy / "devices/raspberry-pi-5.yaml", **{"quantized_matmul.int8": {"dtype": "int8", "slowdown": 0.5}})
    _raises(lambda: load_device("raspberry-pi-5", data_copy), "quantized_matmul.int8.slowdown", ">= 1")


def _costs_doc(root):
    return json.loads((root / COSTS).read_text())


def _load_costs(root):
    return load_costs(load_model("smollm2-135m", root), "this-host", "fp32", "analytic", root)


def test_wrong_number_of_layer_rows(data_copy):
    doc = _costs_doc(data_copy)
    doc["layers"]["decode_s"] = doc["layers"]["decode_s"][:29]
    (data_copy / COSTS).write_text(json.dumps(doc))
    _raises(lambda: _load_costs(data_copy), COSTS.split("/")[-1], "layers.decode_s", "(29, 9, 7)", "30 layers")


@pytest.mark.parametrize("value,expect", [(-1e-6, ">= 0"), (math.nan, "finite"), (math.inf, "finite")])
def test_negative_or_nan_cost(data_copy, value, expect):
    doc = _costs_doc(data_copy)
    doc["layers"]["prefill_s"][4][2][1] = value
    (data_copy / COSTS).write_text(json.dumps(doc).replace("NaN", "NaN"))
    e = _raises(lambda: _load_costs(data_copy), "layers.prefill_s", expect)
    assert "layers 4, units 2, contexts 1" in str(e)


def test_table_for_another_model_or_unit_layout(data_copy):
    doc = _costs_doc(data_copy)
    doc["unit_names"] = doc["unit_names"][:-1]
    (data_copy / COSTS).write_text(json.dumps(doc))
    _raises(lambda: _load_costs(data_copy), "unit_names", "ffn.3")
    model = load_model("gpt2-xl", data_copy)
    _raises(lambda: load_costs_file(data_copy / COSTS, model), "model", "gpt2-xl")


def test_measured_table_needs_provenance(data_copy):
    doc = _costs_doc(data_copy)
    doc["provenance"] = {"kind": "measured", "host": "x", "date": "2026-11-24", "command": "c"}
    (data_copy / COSTS).write_text(json.dumps(doc))
    _raises(lambda: _load_costs(data_copy), "provenance.tool_versions", "missing")


def test_missing_table_says_how_to_make_it(data_copy):
    model = load_model("llama-2-7b", data_copy)
    _raises(lambda: load_costs(model, "galaxy-s23", "int4", "best", data_copy), "splitrl-profiles build llama-2-7b")


def test_model_that_fits_no_placement(data_copy):
    _edit_yaml(data_copy / "devices/a100-80gb.yaml", memory_bytes=1e9)
    model, pi = load_model("llama-2-13b", data_copy), load_device("raspberry-pi-5", data_copy)
    cloud = load_device("a100-80gb", data_copy)
    _raises(lambda: check_fit(model, pi, cloud, ("fp16",)), "a100-80gb.yaml", "memory_bytes",
            "does not fit", "any placement")
    _raises(lambda: check_fit(model, pi, None, ("fp16", "int4")), "raspberry-pi-5.yaml", "edge-only needs")


def _ppl_doc():
    return {"schema": "splitrl.ppl/v1", "model": "smollm2-135m", "baseline_ppl": 12.5,
            "sweeps": {
                "format": {"axes": {"boundary": [1, 15, 29], "format": ["fp16", "int8", "int4"]},
                           "mean": [[0.0, 0.1, 1.0]] * 3, "std": [[0.0, 0.0, 0.1]] * 3},
                "loss": {"axes": {"boundary": [1, 15, 29], "loss": [0.0, 0.1]}, "fixed": {"format": "fp16"},
                         "mean": [[0.0, 1.0]] * 3, "std": [[0.0, 0.1]] * 3}},
            "provenance": {"kind": "measured", "command": "splitrl-profiles measure ppl"}}


def test_ppl_table_schema(data_copy, tmp_path):
    model = load_model("smollm2-135m", data_copy)
    t = PPLTable.from_dict(_ppl_doc(), model, "p.json")
    assert t.sweeps["loss"].mean.shape == (3, 2) and t.sweeps["format"].axes["format"] == ("fp16", "int8", "int4")
    assert PPLTable.from_dict(t.to_dict(), model).sweeps["loss"].fixed == {"format": "fp16"}
    bad = _ppl_doc()
    bad["sweeps"]["loss"]["axes"]["boundary"] = [1, 15, 31]
    _raises(lambda: PPLTable.from_dict(bad, model, "p.json"), "p.json", "sweeps.loss.axes.boundary", "0..30")
    bad = _ppl_doc()
    bad["sweeps"]["loss"]["std"] = [[0.0, -0.1]] * 3
    _raises(lambda: PPLTable.from_dict(bad, model, "p.json"), "sweeps.loss.std", ">= 0")
    bad = _ppl_doc()
    bad["sweeps"]["loss"]["mean"] = [[0.0, 1.0]] * 2
    _raises(lambda: PPLTable.from_dict(bad, model, "p.json"), "sweeps.loss.mean", "3 boundary")
    bad = _ppl_doc()
    bad["sweeps"]["loss"]["axes"]["snr"] = [1.0]
    _raises(lambda: PPLTable.from_dict(bad, model, "p.json"), "sweeps.loss.axes.snr", "unknown axis")
    bad = _ppl_doc()
    del bad["sweeps"]["format"]
    _raises(lambda: PPLTable.from_dict(bad, model, "p.json"), "sweeps.format", "missing required sweep")
    _raises(lambda: load_ppl(model, path=tmp_path / "none.json"), "none.json", "splitrl-profiles measure ppl")


def test_yaml_floats_without_exponent_sign_are_numbers(data_copy):
    (data_copy / "devices/raspberry-pi-5.yaml").write_text(
        (data_copy / "devices/raspberry-pi-5.yaml").read_text().replace("17.07e9", "17.07e9"))
    assert load_device("raspberry-pi-5", data_copy).mem_bandwidth == 17.07e9


def test_corrupt_file(data_copy):
    (data_copy / COSTS).write_text("{not json")
    _raises(lambda: _load_costs(data_copy), COSTS.split("/")[-1], "not valid JSON")
