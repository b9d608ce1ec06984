"""`splitrl-profiles measure` end to end on a tiny random Llama (built here, no download), and its parts."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from splitrl.lm import damage as dmg  # noqa: E402
from splitrl.profiles.calibration import load_calibration  # noqa: E402
from splitrl.profiles.cli import validate_tree  # noqa: E402
from splitrl.profiles.formats import tx_bytes_per_token  # noqa: E402
from splitrl.profiles.store import load_costs_file, load_model, load_ppl  # noqa: E402
from splitrl.profiling.cli import main  # noqa: E402

TEXT = " ".join(f"the {w} of line {i} runs to the {v} and back" for i, (w, v) in
                enumerate(zip(["edge", "cloud", "model", "layer", "head"] * 60, ["sea", "hill", "town"] * 100, strict=False)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 4-layer Llama (d 64, 4 heads, 2 KV heads, d_ff 128) with a byte-level BPE tokenizer trained here."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("models") / "tiny-llama"
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    # A few hundred Adam steps on the text: a random model's PPL is ~vocab and damage only adds noise
    # to it, while a model that has learnt something is hurt by damage as a real one is.
    ids = fast(TEXT, return_tensors="pt")["input_ids"][0]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        starts = torch.randint(0, len(ids) - 33, (8,), generator=torch.Generator().manual_seed(step))
        batch = torch.stack([ids[s:s + 32] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("text") / "corpus.txt"
    p.write_text(TEXT)
    return p


@pytest.fixture(scope="module")
def profiled(tiny, corpus, tmp_path_factory) -> Path:
    """Run both commands once (--quick) into a fresh profiles directory."""
    out = tmp_path_factory.mktemp("profiles")
    assert main(["cost", "--model", str(tiny), "--out", str(out), "--quick"]) == 0
    assert main(["ppl", "--model", str(tiny), "--corpus", str(corpus), "--out", str(out), "--quick"]) == 0
    return out


def test_both_commands_write_tables_that_validate(profiled):
    arch = load_model(str(profiled / "models" / "tiny-llama.yaml"))
    assert (arch.n_layers, arch.attn_units, arch.ffn_chunks) == (4, 2, 4)  # attn_units = n_kv_heads by default
    cost = load_costs_file(profiled / "costs" / "measured" / "tiny-llama__this-host__fp32.json", arch)
    assert cost.provenance["kind"] == "measured" and cost.provenance["threads"] == 1
    assert (cost.prefill_s > 0).all() and (cost.decode_s > 0).all()
    lvu = cost.provenance["layer_vs_units"]["prefill"]["ratio_units_over_layer"]
    assert all(0.05 < r < 50 for r in lvu)
    ppl = load_ppl(arch, path=profiled / "ppl" / "tiny-llama.json")
    assert set(ppl.sweeps) == {"format", "loss", "snr_db", "cloud_fraction", "combined"}
    cal = load_calibration(profiled / "calibration" / "this-host__tiny-llama.json")
    assert cal.models == ("tiny-llama",) and all(v > 0 for r in cal.ratios.values() for v in r.values())
    assert validate_tree(profiled) == []


def test_undamaged_split_equals_unsplit(tiny, corpus):
    from splitrl.lm.model import load_causal_lm
    from splitrl.lm.units import arch_dict
    from splitrl.profiles.schema import ModelArch
    from splitrl.profiling.corpus import token_windows
    from splitrl.profiling.ppl import SplitEvaluator

    lm = load_causal_lm(tiny)
    arch = ModelArch.from_dict(arch_dict(lm.model.config, "tiny-llama", "test"))
    w = token_windows(lm.tokenizer, corpus.read_text(), 32, 4)
    ev = SplitEvaluator(lm.model, arch, w, 2, (1, 2, 3), 1024)
    for b in (1, 2, 3):
        for s in (0, 1):
            assert ev.split_nll(b, None, s) == pytest.approx(ev.clean[s], rel=1e-6)
    # And a direct unsplit forward gives the same PPL as the evaluator's baseline.
    with torch.inference_mode():
        nll = sum(float(lm.model(input_ids=g, labels=g).loss) * g[:, 1:].numel() for g in ev.groups)
    assert math.exp(nll / sum(ev.tokens)) == pytest.approx(ev.baseline_ppl, rel=1e-5)


def test_int4_hurts_at_least_as_much_as_int8(profiled):
    arch = load_model(str(profiled / "models" / "tiny-llama.yaml"))
    s = load_ppl(arch, path=profiled / "ppl" / "tiny-llama.json").sweeps["format"]
    fmt = list(s.axes["format"])
    inner = slice(1, -1)  # boundaries 0 and L are exact zeros
    assert s.mean[inner, fmt.index("int4")].mean() >= s.mean[inner, fmt.index("int8")].mean()
    assert (s.mean[[0, -1]] == 0).all()


def test_rerun_reuses_measured_cells(profiled, tiny, corpus):
    before = (profiled / "ppl" / "tiny-llama.cells.jsonl").read_text().count("\n")
    assert main(["ppl", "--model", str(tiny), "--corpus", str(corpus), "--out", str(profiled), "--quick"]) == 0
    assert (profiled / "ppl" / "tiny-llama.cells.jsonl").read_text().count("\n") == before


def test_quantise_dequantise_matches_the_wire_format():
    x = torch.randn(3, 5, 130) * 4
    for fmt, levels in (("int8", 127), ("int4", 7)):
        y = dmg.quant_dequant(x, fmt)
        err = (y - x).abs()
        group_max = torch.nn.functional.pad(x.abs(), (0, 62)).reshape(3, 5, 3, 64).amax(-1)
        bound = (group_max / levels / 2 * 1.01).repeat_interleave(64, -1)[..., :130]  # half a step, fp16 scale
        assert (err <= bound + 1e-6).all()
        assert len(torch.unique(y[0, 0, :64])) <= 2 * levels + 1
    assert torch.equal(dmg.quant_dequant(x, "fp16"), x.half().float())
    for fmt in ("fp16", "int8", "int4"):  # the byte map agrees with the bytes the env charges
        assert dmg.value_byte_map(576, fmt)[3] == tx_bytes_per_token(576, fmt)


def test_packet_loss_rate_and_noise_snr():
    g = dmg.seeded_generator("t", 0)
    m = dmg.loss_mask(400, 576, "fp16", 1024, 0.1, g)
    assert abs(m.float().mean().item() - 0.1) < 0.03
    assert dmg.loss_mask(10, 576, "int4", 1024, 0.0, g).sum() == 0
    assert dmg.loss_mask(10, 576, "int8", 1024, 1.0, g).all()
    x = torch.randn(2, 64, 576)
    y = dmg.damage(x, dmg.Damage("fp16", snr_db=10.0), g)
    noise = (y - x.half().float()).pow(2).mean() / x.pow(2).mean()
    assert 10 * math.log10(1 / noise.item()) == pytest.approx(10.0, abs=0.2)
    a = dmg.damage(x, dmg.Damage("int8", loss=0.3), dmg.seeded_generator("c", 1))
    b = dmg.damage(x, dmg.Damage("int8", loss=0.3), dmg.seeded_generator("c", 1))
    assert torch.equal(a, b)  # same cell and seed: same draws (resumable runs agree)


def test_missing_model_path_is_a_clear_error(tmp_path, capsys):
    assert main(["cost", "--model", str(tmp_path / "nope"), "--out", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().out
    assert "nope" in err and "does not exist" in err and "Traceback" not in err


def test_corrupt_gguf_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    assert main(["ppl", "--model", str(bad), "--out", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().out
    assert "broken.gguf" in err and "could not load" in err


def test_empty_corpus_is_a_clear_error(tiny, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(["ppl", "--model", str(tiny), "--corpus", str(empty), "--out", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().out
    assert "empty.txt" in err and "empty" in err
    short = tmp_path / "short.txt"
    short.write_text("a few words")
    assert main(["ppl", "--model", str(tiny), "--corpus", str(short), "--out", str(tmp_path), "--quick"]) == 2
    assert "fewer than one window" in capsys.readouterr().out


def test_plot_writes_a_png(profiled, tiny, tmp_path):
    png = tmp_path / "p.png"
    assert main(["plot", "--model", str(tiny), "--out", str(profiled), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_shipped_measured_tables_validate_and_agree():
    """The shipped measured tables (when present) validate, and the PPL table's c = 1 partial-layer
    column equals the plain-boundary int4 column (the same computation)."""
    from tests.conftest import DATA

    arch = load_model("smollm2-135m", root=DATA)
    path = DATA / "ppl" / "smollm2-135m.json"
    if not path.is_file():
        pytest.skip("no shipped PPL table yet")
    t = load_ppl(arch, path=path)   # not the session's SPLITRL_PROFILES_DATA (env tests set a synthetic one)
    cf, fmt = t.sweeps["cloud_fraction"], t.sweeps["format"]
    rows = np.isin(fmt.axes["boundary"], cf.axes["boundary"])
    np.testing.assert_allclose(cf.mean[:, -1], fmt.mean[rows, list(fmt.axes["format"]).index(cf.fixed["format"])])
    assert json.loads(path.read_text())["provenance"]["kind"] == "measured"


def test_units_add_up_to_the_layer(tiny):
    """The units the cost command times compute the layer: prefill and decode partial sums merge to
    the framework's own decoder layer output."""
    from splitrl.lm.model import load_causal_lm
    from splitrl.lm.units import arch_dict, attn_unit_decode, attn_unit_prefill, ffn_unit
    from splitrl.profiles.schema import ModelArch
    from splitrl.profiling.cost import CostProbe, _SliceCache

    lm = load_causal_lm(tiny)
    arch = ModelArch.from_dict(arch_dict(lm.model.config, "tiny-llama", "test"))
    p = CostProbe(lm.model, arch)
    lay = p.layers[1]
    x = torch.randn(1, 12, arch.d_model)
    cos, sin = p._rope(x, 0)

    def merged(xin, attn_parts):
        h = xin + sum(attn_parts(lay.input_layernorm(xin)))
        hn = lay.post_attention_layernorm(h)
        return h + sum(ffn_unit(hn, w) for w in p.ffn_w[1])

    with torch.inference_mode():
        whole = lay(x, attention_mask=None, position_ids=torch.arange(12)[None], position_embeddings=(cos, sin))
        units = merged(x, lambda xn: [attn_unit_prefill(xn, w, cos, sin) for w in p.attn_w[1]])
        torch.testing.assert_close(units, whole, rtol=1e-5, atol=1e-5)
        # decode: token 12 against the K/V of 12 cached tokens, per unit and whole
        x1 = torch.randn(1, 1, arch.d_model)
        c1, s1 = p._rope(x1, 12)
        hkv, hd = arch.kv_heads_per_unit, arch.head_dim
        kv = [(torch.randn(1, hkv, 13, hd), torch.randn(1, hkv, 13, hd)) for _ in range(arch.attn_units)]
        cache = _SliceCache(torch.cat([k for k, _ in kv], 1), torch.cat([v for _, v in kv], 1), 12)
        whole1 = lay(x1, attention_mask=None, position_ids=torch.tensor([[12]]), past_key_values=cache,
                     use_cache=True, position_embeddings=(c1, s1))
        units1 = merged(x1, lambda xn: [attn_unit_decode(xn, w, c1, s1, *kv[u], 12) for u, w in enumerate(p.attn_w[1])])
        torch.testing.assert_close(units1, whole1, rtol=1e-5, atol=1e-5)


def test_calibration_file_errors_name_the_field(tmp_path):
    from splitrl.profiles.calibration import CALIBRATION_SCHEMA, Calibration
    from splitrl.profiles.errors import ProfileError

    good = {"schema": CALIBRATION_SCHEMA, "device": "d", "model": "m", "weight_format": "fp32",
            "ratios": {k: {"prefill": 1.0, "decode": 2.0} for k in ("norm", "attn", "ffn", "embedding", "final_norm", "lm_head")},
            "applies_to": {"devices": ["d"], "models": ["m"]}, "provenance": {"command": "test"}}
    assert Calibration.from_dict(good).ratios["attn"]["decode"] == 2.0
    bad = json.loads(json.dumps(good))
    bad["ratios"]["ffn"]["decode"] = -1
    with pytest.raises(ProfileError, match=r"ratios\.ffn\.decode = -1"):
        Calibration.from_dict(bad, "x.json")
    bad = json.loads(json.dumps(good))
    del bad["ratios"]["lm_head"]
    with pytest.raises(ProfileError, match=r"ratios\.lm_head"):
        Calibration.from_dict(bad, "x.json")
