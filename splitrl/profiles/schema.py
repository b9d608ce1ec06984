"""The profile schema: model architectures, devices, per-(model, device) cost tables, PPL tables.

All four are frozen dataclasses built only through `from_dict`, which validates every field and
raises `ProfileError` naming the file and field. Arrays are numpy (host side); the JAX env converts
them once. Units: seconds, joules, bytes, FLOP/s, watts.

Placement units of one transformer layer, in order (the env and the harness use the same order):
    attn_norm, attn.0 .. attn.{A-1}, ffn_norm, ffn.0 .. ffn.{C-1}
An attention unit holds n_heads/A query heads and whole KV groups (n_kv_heads/A of them), with its
rows of the output projection, so its output is a partial sum over d_model; an FFN unit holds a
d_ff/C slice of the up/gate columns and the matching down rows, also a partial sum.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from splitrl.profiles.errors import ProfileError
from splitrl.profiles.formats import TX_FORMATS, WEIGHT_FORMATS
from splitrl.profiles.reader import Reader

MODEL_SCHEMA, DEVICE_SCHEMA, COSTS_SCHEMA, PPL_SCHEMA = (
    "splitrl.model/v1", "splitrl.device/v1", "splitrl.costs/v1", "splitrl.ppl/v1")
FAMILIES = ("llama", "gpt2")  # llama: RMSNorm, SwiGLU, RoPE; gpt2: LayerNorm+bias, GELU MLP, learned positions
MODEL_BLOCKS = ("embedding", "final_norm", "lm_head")  # run once per token outside the layers
DEVICE_ROLES = ("edge", "cloud")
PROVENANCE_KINDS = ("analytic", "measured")


def _schema(r: Reader, expected: str) -> None:
    got = r.raw("schema")
    if got != expected:
        raise r.fail("schema", got, f"must be {expected!r}", "this file is not of that kind or is from another version")


def _source(r: Reader, key: str = "source") -> dict:
    """Provenance is required and free-form, but must be a non-empty mapping."""
    value = r.raw(key)
    if not isinstance(value, dict) or not value:
        raise r.fail(key, value, "must be a non-empty mapping saying where the numbers come from")
    return value


@dataclasses.dataclass(frozen=True)
class ModelArch:
    name: str
    display_name: str
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    max_context: int
    tie_embeddings: bool
    attn_units: int
    ffn_chunks: int
    kv_bytes_per_value: float
    bytes_per_param: dict
    source: dict
    path: str = ""

    @classmethod
    def from_dict(cls, data: dict, path: Path | str = "<dict>") -> ModelArch:
        r = Reader(path, data)
        _schema(r, MODEL_SCHEMA)
        f = dict(
            name=r.str("name"), display_name=r.str("display_name"), family=r.str("family", FAMILIES),
            n_layers=r.int("n_layers", 1), d_model=r.int("d_model", 1), n_heads=r.int("n_heads", 1),
            n_kv_heads=r.int("n_kv_heads", 1), head_dim=r.int("head_dim", 1), d_ff=r.int("d_ff", 1),
            vocab_size=r.int("vocab_size", 1), max_context=r.int("max_context", 1),
            tie_embeddings=r.bool("tie_embeddings"), attn_units=r.int("attn_units", 1),
            ffn_chunks=r.int("ffn_chunks", 1), kv_bytes_per_value=r.float("kv_bytes_per_value", 0, lo_open=True),
        )
        bpp = r.sub("bytes_per_param")
        f["bytes_per_param"] = {fmt: bpp.float(fmt, 0, lo_open=True) for fmt in WEIGHT_FORMATS}
        bpp.done()
        f["source"] = _source(r)
        r.done()
        m = cls(**f, path=str(path))
        m._check(r)
        return m

    def _check(self, r: Reader) -> None:
        if self.d_model % self.n_heads:
            raise r.fail("n_heads", self.n_heads, f"must divide d_model = {self.d_model}")
        if self.n_heads * self.head_dim != self.d_model and self.family == "gpt2":
            raise r.fail("head_dim", self.head_dim, f"n_heads * head_dim must equal d_model = {self.d_model}")
        if self.n_heads % self.n_kv_heads:
            raise r.fail("n_kv_heads", self.n_kv_heads, f"must divide n_heads = {self.n_heads}")
        if self.n_kv_heads % self.attn_units:
            raise r.fail("attn_units", self.attn_units,
                         f"must divide n_kv_heads = {self.n_kv_heads} (a unit holds whole KV groups)")
        if self.d_ff % self.ffn_chunks:
            raise r.fail("ffn_chunks", self.ffn_chunks, f"must divide d_ff = {self.d_ff}")

    # ---- derived structure -------------------------------------------------------------------
    @property
    def unit_names(self) -> tuple[str, ...]:
        return (("attn_norm",) + tuple(f"attn.{i}" for i in range(self.attn_units))
                + ("ffn_norm",) + tuple(f"ffn.{i}" for i in range(self.ffn_chunks)))

    @property
    def unit_kinds(self) -> tuple[str, ...]:
        return tuple("norm" if n.endswith("_norm") else n.split(".")[0] for n in self.unit_names)

    @property
    def n_units(self) -> int:
        return self.attn_units + self.ffn_chunks + 2

    @property
    def heads_per_unit(self) -> int:
        return self.n_heads // self.attn_units

    @property
    def kv_heads_per_unit(self) -> int:
        return self.n_kv_heads // self.attn_units

    def unit_params(self) -> np.ndarray:
        """Parameters of each placement unit of one layer, shape [n_units]."""
        d, hd = self.d_model, self.head_dim
        q, kv = self.heads_per_unit * hd, self.kv_heads_per_unit * hd
        gpt2 = self.family == "gpt2"
        norm = 2 * d if gpt2 else d
        attn = d * q + 2 * d * kv + q * d + ((q + 2 * kv + d / self.attn_units) if gpt2 else 0)
        chunk = self.d_ff // self.ffn_chunks
        ffn = (2 * d * chunk + chunk + d / self.ffn_chunks) if gpt2 else 3 * d * chunk
        return np.array([norm] + [attn] * self.attn_units + [norm] + [ffn] * self.ffn_chunks, dtype=np.float64)

    def block_params(self) -> dict[str, float]:
        """Parameters of the blocks outside the layers. lm_head counts its matrix even when tied: the
        embedding (edge) and the head (cloud) usually sit on different sides, each needing a copy."""
        emb = self.vocab_size * self.d_model + (self.max_context * self.d_model if self.family == "gpt2" else 0)
        norm = 2 * self.d_model if self.family == "gpt2" else self.d_model
        return {"embedding": float(emb), "final_norm": float(norm), "lm_head": float(self.vocab_size * self.d_model)}

    def total_params(self) -> float:
        """Parameter count as published (tied embeddings counted once)."""
        b = self.block_params()
        head = 0.0 if self.tie_embeddings else b["lm_head"]
        return self.n_layers * self.unit_params().sum() + b["embedding"] + b["final_norm"] + head

    def unit_kv_values_per_token(self) -> np.ndarray:
        """KV-cache values one token adds per unit of one layer (K and V of the unit's KV heads)."""
        kv = 2 * self.kv_heads_per_unit * self.head_dim
        return np.array([0] + [kv] * self.attn_units + [0] * (self.ffn_chunks + 1), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    display_name: str
    role: str
    peak_flops: dict          # dtype -> FLOP/s (dense); a dtype missing runs at the fp32 rate
    mem_bandwidth: float      # bytes/s, theoretical peak
    memory_bytes: float       # bytes usable for model weights + KV cache
    power_active_w: float
    power_idle_w: float
    power_radio_tx_w: float
    kernel_overhead_s: float  # fixed cost of launching one kernel / op
    compute_efficiency: float  # achieved fraction of peak FLOP/s on transformer GEMMs
    memory_efficiency: float   # achieved fraction of peak bandwidth on weight streaming
    source: dict
    path: str = ""

    @classmethod
    def from_dict(cls, data: dict, path: Path | str = "<dict>") -> Device:
        r = Reader(path, data)
        _schema(r, DEVICE_SCHEMA)
        f = dict(name=r.str("name"), display_name=r.str("display_name"), role=r.str("role", DEVICE_ROLES))
        pf = r.sub("peak_flops")
        peak = {k: pf.float(k, 0, lo_open=True) for k in ("fp32", "fp16", "bf16", "int8") if k in pf.data}
        pf.done()
        if "fp32" not in peak:
            raise ProfileError(path, "peak_flops.fp32", None, "missing required field", "add it")
        f["peak_flops"] = peak
        f["mem_bandwidth"] = r.float("mem_bandwidth", 0, lo_open=True)
        f["memory_bytes"] = r.float("memory_bytes", 0, lo_open=True)
        pw = r.sub("power_w")
        f["power_active_w"] = pw.float("active", 0, lo_open=True)
        f["power_idle_w"] = pw.float("idle", 0)
        f["power_radio_tx_w"] = pw.float("radio_tx", 0)
        pw.done()
        if f["power_idle_w"] > f["power_active_w"]:
            raise ProfileError(path, "power_w.idle", f["power_idle_w"],
                               f"must not exceed power_w.active = {f['power_active_w']}")
        f["kernel_overhead_s"] = r.float("kernel_overhead_s", 0)
        eff = r.sub("efficiency")
        f["compute_efficiency"] = eff.float("compute", 0, 1, lo_open=True)
        f["memory_efficiency"] = eff.float("memory", 0, 1, lo_open=True)
        eff.done()
        f["source"] = _source(r)
        r.done()
        return cls(**f, path=str(path))

    def flops(self, dtype: str) -> float:
        """Achievable FLOP/s for `dtype` (peak x efficiency); unsupported dtypes run at fp32 speed."""
        return self.peak_flops.get(dtype, self.peak_flops["fp32"]) * self.compute_efficiency

    @property
    def bandwidth(self) -> float:
        return self.mem_bandwidth * self.memory_efficiency


@dataclasses.dataclass(frozen=True)
class BlockCost:
    """Cost of one model-level block (embedding, final norm, LM head), arrays over the context grid."""
    prefill_s: np.ndarray
    decode_s: np.ndarray
    prefill_j: np.ndarray
    decode_j: np.ndarray
    weight_bytes: float


@dataclasses.dataclass(frozen=True)
class CostTable:
    """Per-(model, device, weight format) cost of every placement unit of every layer.

    Arrays `[layer, unit, context]`: `prefill_s[l, u, i]` is seconds per token when prefilling a
    sequence of `context_grid[i]` tokens; `decode_s[l, u, i]` is seconds for one decode token with
    `context_grid[i]` tokens in the KV cache. `*_j` are the matching joules on that device.
    """
    model: str
    device: str
    weight_format: str
    context_grid: np.ndarray   # [C] increasing token counts
    unit_names: tuple
    prefill_s: np.ndarray      # [L, U, C]
    decode_s: np.ndarray       # [L, U, C]
    prefill_j: np.ndarray      # [L, U, C]
    decode_j: np.ndarray       # [L, U, C]
    weight_bytes: np.ndarray   # [L, U]
    kv_bytes_per_token: np.ndarray  # [L, U]
    blocks: dict               # name -> BlockCost
    provenance: dict
    path: str = ""

    @classmethod
    def from_dict(cls, data: dict, model: ModelArch, path: Path | str = "<dict>") -> CostTable:
        r = Reader(path, data)
        _schema(r, COSTS_SCHEMA)
        name = r.str("model")
        if name != model.name:
            raise r.fail("model", name, f"must be the model the table is loaded for ({model.name!r})")
        device, wfmt = r.str("device"), r.str("weight_format", WEIGHT_FORMATS)
        prov = r.sub("provenance")
        kind = prov.str("kind", PROVENANCE_KINDS)
        needed = ("host", "tool_versions", "date", "command") if kind == "measured" else ("formula", "sources")
        for key in needed:
            prov.raw(key)
        provenance = dict(prov.data)
        grid_raw = r.raw("context_grid")
        if not isinstance(grid_raw, list) or len(grid_raw) < 1:
            raise r.fail("context_grid", grid_raw, "must be a non-empty list of token counts")
        grid = r.array("context_grid", (len(grid_raw),), ("points",), lo=1)
        if (np.diff(grid) <= 0).any():
            raise r.fail("context_grid", grid.tolist(), "must be strictly increasing")
        units = tuple(r.str_list("unit_names"))
        if units != model.unit_names:
            raise r.fail("unit_names", list(units), f"must be {list(model.unit_names)} for model "
                         f"{model.name} (attn_units={model.attn_units}, ffn_chunks={model.ffn_chunks})",
                         "regenerate the table for this model file")
        L, U, C = model.n_layers, model.n_units, len(grid)
        lay = r.sub("layers")
        axes3, axes2 = ("layers", "units", "contexts"), ("layers", "units")
        arrays = {k: lay.array(k, (L, U, C), axes3) for k in ("prefill_s", "decode_s", "prefill_j", "decode_j")}
        arrays["weight_bytes"] = lay.array("weight_bytes", (L, U), axes2)
        arrays["kv_bytes_per_token"] = lay.array("kv_bytes_per_token", (L, U), axes2)
        lay.done()
        blk = r.sub("blocks")
        blocks = {}
        for b in MODEL_BLOCKS:
            br = blk.sub(b)
            blocks[b] = BlockCost(*(br.array(k, (C,), ("contexts",)) for k in
                                    ("prefill_s", "decode_s", "prefill_j", "decode_j")),
                                  weight_bytes=br.float("weight_bytes", 0))
            br.done()
        blk.done()
        r.done()
        table = cls(model=name, device=device, weight_format=wfmt, context_grid=grid, unit_names=units,
                    blocks=blocks, provenance=provenance, path=str(path), **arrays)
        return table

    def to_dict(self) -> dict:
        def rnd(a):  # 5 significant digits: far below measurement spread, and small files
            return np.vectorize(lambda x: float(f"{x:.5g}"))(np.asarray(a, dtype=np.float64)).tolist()
        return {
            "schema": COSTS_SCHEMA, "model": self.model, "device": self.device,
            "weight_format": self.weight_format, "provenance": self.provenance,
            "context_grid": [int(c) for c in self.context_grid], "unit_names": list(self.unit_names),
            "layers": {k: rnd(getattr(self, k)) for k in
                       ("prefill_s", "decode_s", "prefill_j", "decode_j", "weight_bytes", "kv_bytes_per_token")},
            "blocks": {b: {"prefill_s": rnd(c.prefill_s), "decode_s": rnd(c.decode_s),
                           "prefill_j": rnd(c.prefill_j), "decode_j": rnd(c.decode_j),
                           "weight_bytes": float(c.weight_bytes)} for b, c in self.blocks.items()},
        }

    def layer_s(self, phase: str) -> np.ndarray:
        """Seconds per token of each whole layer, [L, C] (all its units on one device)."""
        return getattr(self, f"{phase}_s").sum(axis=1)


SWEEP_AXES = ("boundary", "format", "loss", "snr_db", "cloud_fraction")


@dataclasses.dataclass(frozen=True)
class PPLSweep:
    """One measured sweep: `mean`/`std` (over seeds) of PPL_damaged - baseline_ppl, one array axis per
    entry of `axes`, in order. `fixed` holds the damage settings not swept (e.g. {"format": "fp16"})."""
    axes: dict                 # name -> np.ndarray of values (tuple of str for `format`)
    mean: np.ndarray
    std: np.ndarray
    fixed: dict


@dataclasses.dataclass(frozen=True)
class PPLTable:
    """Perplexity degradation of a model when the activations crossing the boundary are damaged.

    A full factorial grid (boundary x format x loss x noise x partial) is too costly to measure, so a
    table holds named sweeps, each a dense grid over `boundary` and one or two damage axes:
      format          [boundary, format]           quantise-dequantise only (required)
      loss            [boundary, loss]             packet loss, fp16 (residual loss after retransmission)
      snr_db          [boundary, snr_db]           additive Gaussian noise at that SNR, fp16
      cloud_fraction  [boundary, cloud_fraction]   only that share of the boundary layer's units crosses
      combined        any axes                     cross cells that check how well the sweeps add up
    The environment adds the sweeps' deltas (documented; `combined` measures the error of that).
    Axes: boundary = edge runs layers < b (integers 0..L); format in fp16/int8/int4; loss in [0, 1];
    snr_db in dB; cloud_fraction in [0, 1].
    """
    model: str
    baseline_ppl: float
    sweeps: dict               # name -> PPLSweep
    provenance: dict
    path: str = ""

    SWEEPS = ("format", "loss", "snr_db", "cloud_fraction", "combined")

    @classmethod
    def from_dict(cls, data: dict, model: ModelArch, path: Path | str = "<dict>") -> PPLTable:
        r = Reader(path, data)
        _schema(r, PPL_SCHEMA)
        name = r.str("model")
        if name != model.name:
            raise r.fail("model", name, f"must be the model the table is loaded for ({model.name!r})")
        baseline = r.float("baseline_ppl", 1.0)
        sw = r.sub("sweeps")
        if "format" not in sw.data:
            raise sw.fail("format", None, "missing required sweep", "measure it with `splitrl-profiles measure ppl`")
        sweeps = {}
        for key in list(sw.data):
            if key not in cls.SWEEPS:
                raise sw.fail(key, "...", f"unknown sweep (known: {list(cls.SWEEPS)})")
            sweeps[key] = _read_sweep(sw.sub(key), model, key)
        sw.done()
        prov = _source(r, "provenance")
        r.done()
        return cls(model=name, baseline_ppl=baseline, sweeps=sweeps, provenance=prov, path=str(path))

    def to_dict(self) -> dict:
        return {
            "schema": PPL_SCHEMA, "model": self.model, "baseline_ppl": float(self.baseline_ppl),
            "sweeps": {k: {"axes": {a: (list(v) if a == "format" else np.asarray(v).tolist()) for a, v in s.axes.items()},
                           "fixed": s.fixed, "mean": np.asarray(s.mean).tolist(), "std": np.asarray(s.std).tolist()}
                       for k, s in self.sweeps.items()},
            "provenance": self.provenance,
        }


def _read_sweep(r: Reader, model: ModelArch, key: str) -> PPLSweep:
    ax = r.sub("axes")
    order = list(ax.data)
    if "boundary" not in order:
        raise ax.fail("boundary", None, "missing required axis", "every sweep is over boundaries")
    if key != "combined" and key != "boundary" and key not in order:
        raise ax.fail(key, None, f"sweep {key!r} must have an axis {key!r}")
    axes: dict = {}
    for k in order:
        if k not in SWEEP_AXES:
            raise ax.fail(k, ax.data[k], f"unknown axis (known: {list(SWEEP_AXES)})")
        if k == "format":
            vals = ax.str_list(k)
            if not vals or any(v not in TX_FORMATS for v in vals):
                raise ax.fail(k, vals, f"must be a non-empty list of {list(TX_FORMATS)}")
            axes[k] = tuple(vals)
            continue
        raw = ax.raw(k)
        if not isinstance(raw, list) or not raw:
            raise ax.fail(k, raw, "must be a non-empty list of numbers")
        vals = ax.array(k, (len(raw),), ("points",), lo=None)
        if (np.diff(vals) <= 0).any():
            raise ax.fail(k, vals.tolist(), "must be strictly increasing")
        axes[k] = vals
    ax.done()
    b = axes["boundary"]
    if b.min() < 0 or b.max() > model.n_layers or (b != np.round(b)).any():
        raise ax.fail("boundary", b.tolist(), f"must be integers in 0..{model.n_layers}")
    for k in ("loss", "cloud_fraction"):
        if k in axes and (axes[k].min() < 0 or axes[k].max() > 1):
            raise ax.fail(k, axes[k].tolist(), "must lie in [0, 1]")
    shape, names = tuple(len(v) for v in axes.values()), tuple(axes)
    mean = r.array("mean", shape, names, lo=None)
    std = r.array("std", shape, names, lo=0.0)
    fixed = r.raw("fixed", {})
    if not isinstance(fixed, dict):
        raise r.fail("fixed", fixed, "must be a mapping of damage settings held fixed in this sweep")
    r.done()
    return PPLSweep(axes=axes, mean=mean, std=std, fixed=fixed)
