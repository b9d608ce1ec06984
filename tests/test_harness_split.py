"""Split inference computes the unsplit model: every partition case, in process and over the wire."""

from __future__ import annotations

import pytest
import torch

from splitrl.lm.damage import quant_dequant
from splitrl.profiles.formats import tx_bytes_per_token
from splitrl.runtime import wire
from splitrl.runtime.split_model import generate_split
from tests.harness_tiny import CASES, PROMPT, reference_tokens, tiny_split_model


@pytest.fixture(scope="module")
def sm():
    return tiny_split_model()


@pytest.fixture(scope="module")
def ref(sm):
    return reference_tokens(sm)


@pytest.mark.parametrize("case", sorted(CASES))
def test_split_equals_unsplit_tokens(sm, ref, case):
    """Lossless crossings give transformers' own greedy tokens; fp16 on the wire gives them too."""
    b, units = CASES[case]
    plan = sm.plan(b, "fp16", units)
    assert generate_split(sm, plan, PROMPT, len(ref)) == ref
    assert generate_split(sm, plan, PROMPT, len(ref), send=lambda k, x: wire.roundtrip(x, "fp16")) == ref


def test_plan_modes_and_crossings(sm):
    assert sm.plan(0, "fp16", (0,) * 6).mode == "cloud_only"
    assert sm.plan(3, "fp16", (0,) * 6).mode == "edge_only"
    p = sm.plan(1, "int8", (0, 1, 1, 0, 1, 0))
    assert p.mode == "split" and p.needs_down and p.up_names(0) == ("h", "pa") and p.up_names(1) == ("pf",)
    assert sm.plan(1, "int8", (1, 1, 0, 1, 1, 0)).up_names(0) == ("h", "pf")
    with pytest.raises(ValueError, match="boundary"):
        sm.plan(4, "fp16", (0,) * 6)
    with pytest.raises(ValueError, match="units"):
        sm.plan(1, "fp16", (0,) * 5)


@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4"])
@pytest.mark.parametrize("d", [64, 576, 100])
def test_wire_format_is_the_profilers_quantiser_and_really_small(fmt, d):
    """decode(encode(x)) is bit-identical to the quantiser the PPL tables were measured with, and the
    bytes on the wire are what the simulator prices (formats.tx_bytes_per_token)."""
    x = torch.randn(2, 5, d, generator=torch.Generator().manual_seed(d)) * 3
    x[0, 0] = 0.0
    data = wire.encode(x, fmt)
    assert torch.equal(wire.decode(data, fmt, tuple(x.shape)), quant_dequant(x, fmt))
    if d % 64 == 0:
        assert len(data) == 10 * tx_bytes_per_token(d, fmt)
    if fmt != "fp16":
        levels = wire.decode(data, fmt, tuple(x.shape))[1, 0, :64].unique().numel()
        assert levels <= {"int8": 255, "int4": 15}[fmt]
    with pytest.raises(wire.WireError):
        wire.decode(data[:-1], fmt, tuple(x.shape))


def test_quantised_formats_change_little_but_something(sm, ref):
    plan = sm.plan(1, "int8", (1, 0, 1, 0, 1, 0))
    got = generate_split(sm, plan, PROMPT, len(ref), send=lambda k, x: wire.roundtrip(x, "int8"))
    assert len(got) == len(ref)


@pytest.mark.slow
def test_smollm2_split_equals_unsplit_over_the_wire():
    """The embedded SmolLM2-135M: split at the middle with mixed units, fp16 over a real loopback
    connection, gives transformers' greedy tokens."""
    from splitrl.lm.model import ModelLoadError, load_causal_lm
    from splitrl.runtime.cloud import CloudServer
    from splitrl.runtime.edge import EdgeClient, Request
    from splitrl.runtime.split_model import SplitModel
    try:
        lm = load_causal_lm(None)
    except ModelLoadError as e:
        pytest.skip(str(e))
    torch.set_num_threads(1)
    s = SplitModel(lm.model)
    ids = lm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    want = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    server = CloudServer(s, insecure_no_auth=True).start()
    client = EdgeClient(s, [(server.host, server.port)], timeout=60)
    try:
        for i, (b, units) in enumerate([(15, (1, 0, 1, 1, 0, 1, 0)), (7, (0, 0, 0, 0, 0, 0, 0))]):
            res = client.generate(Request(i, tuple(ids[0].tolist()), 8), s.plan(b, "fp16", units))
            assert res.status == "ok" and res.tokens == want, (b, units, res.tokens, want)
    finally:
        client.close()
        server.stop()
