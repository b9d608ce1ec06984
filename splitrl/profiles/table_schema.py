"""The profile schema, part two: per-(model, device) cost tables and PPL-degradation tables, built
only through `from_dict`, which validates every field against the model and raises `ProfileError`
naming the file and field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from splitrl.profiles.formats import TX_FORMATS, WEIGHT_FORMATS
from splitrl.profiles.reader import Reader
from splitrl.profiles.schema import (
    COSTS_SCHEMA,
    MODEL_BLOCKS,
    PPL_SCHEMA,
    PROVENANCE_KINDS,
    ModelArch,
    check_schema,
    read_source,
)


def _open(data: dict, model: ModelArch, path, schema: str) -> Reader:
    """A reader of a table document, after checking its schema and that it is `model`'s."""
    r = Reader(path, data)
    check_schema(r, schema)
    name = r.str("model")
    if name != model.name:
        raise r.fail("model", name, f"must be the model the table is loaded for ({model.name!r})")
    return r


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
        r = _open(data, model, path, COSTS_SCHEMA)
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
        table = cls(model=model.name, device=device, weight_format=wfmt, context_grid=grid, unit_names=units,
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
        r = _open(data, model, path, PPL_SCHEMA)
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
        prov = read_source(r, "provenance")
        r.done()
        return cls(model=model.name, baseline_ppl=baseline, sweeps=sweeps, provenance=prov, path=str(path))

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
