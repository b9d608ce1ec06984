"""Time every placement unit of a real model on this host: prefill per token and decode per token.

Method (docs/profiles.md, "Measured cost tables"):
- Each unit runs as the runtime would run it on its own: its own weight slices, its own GEMMs
  (`units.py`), inputs of the right shape. Prefill of S tokens: one call on [1, S, d], time / S.
  Decode with c tokens cached: one token attending to a preallocated cache of c tokens (+ itself).
- All layers have the same shapes, so one row is measured and broadcast to every layer; repetition r
  runs layer r mod L, so weights come from memory as in a real forward, not hot from cache.
- Repetitions are interleaved: each repetition times every unit, the whole layer (the framework's
  own decoder layer, same cache scheme) and the model blocks once, so background load drifts hit
  all of them alike. Warm-up repetitions are dropped; median, 25th and 75th percentiles are kept.
- Energy is time x the device's power_w.active: there is no power meter inside a VM.
"""

from __future__ import annotations

import dataclasses
import gc
import time

import numpy as np
import torch

from splitrl.lm.units import (
    attn_unit_decode,
    attn_unit_prefill,
    attn_unit_weights,
    decoder_layers,
    ffn_unit,
    ffn_unit_weights,
    weight_bytes,
)
from splitrl.profiles.analytic import analytic_costs
from splitrl.profiles.schema import MODEL_BLOCKS, Device, ModelArch
from splitrl.profiles.table_schema import BlockCost, CostTable

CAL_KINDS = ("norm", "attn", "ffn", "embedding", "final_norm", "lm_head")
PHASES = ("prefill", "decode")


@dataclasses.dataclass(frozen=True)
class CostGrid:
    contexts: tuple = (32, 64, 128, 256, 512, 1024)
    repeats: int = 40          # timed repetitions per prefill point
    decode_repeats: int = 200  # decode calls are ~100x shorter and noisier: more of them
    warmup: int = 3


QUICK_COST = CostGrid(contexts=(8, 16), repeats=3, decode_repeats=5, warmup=1)


class _SliceCache:
    """The KV-cache interface the framework's attention calls, over a preallocated buffer: the new
    token is written at `pos` and all pos+1 keys are returned (the same scheme as attn_unit_decode)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, pos: int):
        self.k, self.v, self.pos = k, v, pos

    def update(self, key, value, *args, **kwargs):
        self.k[:, :, self.pos:self.pos + 1] = key
        self.v[:, :, self.pos:self.pos + 1] = value
        return self.k, self.v


class Timers:
    """Interleaved timing of named callables fn(layer_index)."""

    def __init__(self, items: dict):
        self.items = items
        self.samples = {k: [] for k in items}

    def run(self, reps: int, warmup: int, n_layers: int, seed: int = 0) -> None:
        # A fixed order would bias whichever item follows the LM head (caches, allocator state just
        # churned): shuffle the order every repetition. GC pauses stay out of the timed region.
        rng = np.random.default_rng(seed)
        names = list(self.items)
        gc.disable()
        try:
            for r in range(warmup + reps):
                layer = r % n_layers
                for i in rng.permutation(len(names)):
                    name = names[i]
                    t0 = time.perf_counter()
                    self.items[name](layer)
                    dt = time.perf_counter() - t0
                    if r >= warmup:
                        self.samples[name].append(dt)
        finally:
            gc.enable()

    def stats(self, per: float = 1.0) -> dict:
        return {k: [float(np.percentile(v, q)) / per for q in (50, 25, 75)] for k, v in self.samples.items()}


class CostProbe:
    """The model's units with their weights cut per layer, ready to be timed."""

    def __init__(self, model, arch: ModelArch):
        self.model, self.arch = model, arch
        self.layers = decoder_layers(model)
        self.attn_w = [[attn_unit_weights(lay, arch, u) for u in range(arch.attn_units)] for lay in self.layers]
        self.ffn_w = [[ffn_unit_weights(lay, arch, c) for c in range(arch.ffn_chunks)] for lay in self.layers]
        self.inner = model.model
        self.d = arch.d_model

    def _rope(self, x: torch.Tensor, start: int):
        pos = torch.arange(start, start + x.shape[1])[None]
        return self.inner.rotary_emb(x, position_ids=pos)

    def prefill_items(self, S: int) -> dict:
        g = torch.Generator().manual_seed(S)
        x = torch.randn(1, S, self.d, generator=g)
        xn = self.layers[0].input_layernorm(x)
        cos, sin = self._rope(x, 0)
        ids = torch.randint(0, self.arch.vocab_size, (1, S), generator=g)
        pos = torch.arange(S)[None]
        return self._items(
            norm=lambda lay, _n: self.layers[lay].input_layernorm(x),
            attn=lambda lay, u: attn_unit_prefill(xn, self.attn_w[lay][u], cos, sin),
            ffn=lambda lay, c: ffn_unit(xn, self.ffn_w[lay][c]),
            layer=lambda lay: self.layers[lay](x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin)),
            ids=ids, x=x)

    def decode_items(self, ctx: int) -> dict:
        g = torch.Generator().manual_seed(ctx)
        x = torch.randn(1, 1, self.d, generator=g)
        xn = self.layers[0].input_layernorm(x)
        cos, sin = self._rope(x, ctx)
        hkv, hd, L = self.arch.kv_heads_per_unit, self.arch.head_dim, len(self.layers)
        # Preallocated caches: per layer and unit (units) and per layer (whole layer), ctx tokens + 1 slot.
        unit_kv = [[(torch.randn(1, hkv, ctx + 1, hd, generator=g), torch.randn(1, hkv, ctx + 1, hd, generator=g))
                    for _ in range(self.arch.attn_units)] for _ in range(L)]
        layer_kv = [_SliceCache(torch.cat([k for k, _ in unit_kv[i]], 1), torch.cat([v for _, v in unit_kv[i]], 1), ctx)
                    for i in range(L)]
        ids = torch.randint(0, self.arch.vocab_size, (1, 1), generator=g)
        pos = torch.tensor([[ctx]])
        return self._items(
            norm=lambda lay, _n: self.layers[lay].input_layernorm(x),
            attn=lambda lay, u: attn_unit_decode(xn, self.attn_w[lay][u], cos, sin, *unit_kv[lay][u], ctx),
            ffn=lambda lay, c: ffn_unit(xn, self.ffn_w[lay][c]),
            layer=lambda lay: self.layers[lay](x, attention_mask=None, position_ids=pos, past_key_values=layer_kv[lay],
                                               use_cache=True, position_embeddings=(cos, sin)),
            ids=ids, x=x)

    def _items(self, norm, attn, ffn, layer, ids, x) -> dict:
        items = {}
        for name, kind in zip(self.arch.unit_names, self.arch.unit_kinds, strict=True):
            idx = int(name.split(".")[1]) if "." in name else 0
            fn = {"norm": norm, "attn": attn, "ffn": ffn}[kind]
            items[name] = (lambda f, i: (lambda lay: f(lay, i)))(fn, idx)
        items["layer"] = layer
        emb, fnorm, head = self.inner.embed_tokens, self.inner.norm, self.model.lm_head
        items["embedding"] = lambda _l: emb(ids)
        items["final_norm"] = lambda _l: fnorm(x)
        items["lm_head"] = lambda _l: head(x)
        return items

    def measure(self, phase: str, ctx: int, grid: CostGrid) -> dict:
        """{item: [median, p25, p75]} seconds per token for one (phase, context) point."""
        items = self.prefill_items(ctx) if phase == "prefill" else self.decode_items(ctx)
        timers = Timers(items)
        with torch.inference_mode():
            reps = grid.repeats if phase == "prefill" else grid.decode_repeats
            timers.run(reps, grid.warmup, len(self.layers), seed=ctx)
        return timers.stats(per=float(ctx) if phase == "prefill" else 1.0)

    def memory(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """(weight bytes [U], KV bytes per token [U], block weight bytes) of the tensors as they run."""
        lay, a = self.layers[0], self.arch
        elt = lay.input_layernorm.weight.element_size()
        norm = lay.input_layernorm.weight.numel() * elt
        wb = [norm] + [weight_bytes(w) for w in self.attn_w[0]] + [norm] + [weight_bytes(w) for w in self.ffn_w[0]]
        kv = [0] + [2 * a.kv_heads_per_unit * a.head_dim * elt] * a.attn_units + [0] * (a.ffn_chunks + 1)
        blocks = {"embedding": self.inner.embed_tokens.weight.numel() * elt,
                  "final_norm": self.inner.norm.weight.numel() * elt,
                  "lm_head": self.model.lm_head.weight.numel() * elt}
        return np.array(wb, float), np.array(kv, float), blocks


def build_table(arch: ModelArch, device: Device, contexts, points: dict, memory, provenance: dict) -> CostTable:
    """A measured CostTable from `points[(phase, ctx)] = {item: [median, p25, p75]}`."""
    L = arch.n_layers
    med = {ph: np.array([[points[(ph, c)][u][0] for c in contexts] for u in arch.unit_names]) for ph in PHASES}
    layers = {f"{ph}_s": np.broadcast_to(med[ph], (L,) + med[ph].shape).copy() for ph in PHASES}
    wb, kv, block_bytes = memory
    blocks = {}
    for b in MODEL_BLOCKS:
        t = {ph: np.array([points[(ph, c)][b][0] for c in contexts]) for ph in PHASES}
        blocks[b] = BlockCost(prefill_s=t["prefill"], decode_s=t["decode"], prefill_j=t["prefill"] * device.power_active_w,
                              decode_j=t["decode"] * device.power_active_w, weight_bytes=float(block_bytes[b]))
    return CostTable(
        model=arch.name, device=device.name, weight_format="fp32", context_grid=np.asarray(contexts, float),
        unit_names=arch.unit_names, prefill_s=layers["prefill_s"], decode_s=layers["decode_s"],
        prefill_j=layers["prefill_s"] * device.power_active_w, decode_j=layers["decode_s"] * device.power_active_w,
        weight_bytes=np.broadcast_to(wb, (L, arch.n_units)).copy(), kv_bytes_per_token=np.broadcast_to(kv, (L, arch.n_units)).copy(),
        blocks=blocks, provenance=provenance)


def spread_and_ratio(arch: ModelArch, contexts, points: dict) -> dict:
    """Per item p25/p75 over the grid, and the units-vs-whole-layer check: sum of unit medians over
    the whole layer's median (1 = splitting a layer costs nothing; > 1 = the overhead of splitting)."""
    out: dict = {"spread": {}, "layer_vs_units": {}}
    for ph in PHASES:
        pts = [points[(ph, c)] for c in contexts]
        out["spread"][ph] = {k: {"p25": [float(f"{p[k][1]:.4g}") for p in pts], "p75": [float(f"{p[k][2]:.4g}") for p in pts]}
                             for k in pts[0]}
        units = np.array([sum(p[u][0] for u in arch.unit_names) for p in pts])
        whole = np.array([p["layer"][0] for p in pts])
        out["layer_vs_units"][ph] = {
            "units_sum_s": [float(f"{v:.5g}") for v in units], "layer_s": [float(f"{v:.5g}") for v in whole],
            "layer_p25_s": [float(f"{p['layer'][1]:.5g}") for p in pts], "layer_p75_s": [float(f"{p['layer'][2]:.5g}") for p in pts],
            "ratio_units_over_layer": [round(float(v), 4) for v in units / whole]}
    return out


def calibration_ratios(arch: ModelArch, device: Device, table: CostTable) -> tuple[dict, dict]:
    """measured / analytic per unit kind and phase: geometric mean over the context grid (and over
    the units of a kind). Returns (ratios, per-context detail)."""
    ana = analytic_costs(arch, device, "fp32", context_grid=table.context_grid)
    kinds = np.array(arch.unit_kinds)
    ratios: dict = {}
    detail: dict = {}
    for kind in CAL_KINDS:
        ratios[kind], detail[kind] = {}, {}
        for ph in PHASES:
            if kind in MODEL_BLOCKS:
                m, a = getattr(table.blocks[kind], f"{ph}_s"), getattr(ana.blocks[kind], f"{ph}_s")
            else:
                sel = kinds == kind
                m = getattr(table, f"{ph}_s")[0, sel].mean(0)
                a = getattr(ana, f"{ph}_s")[0, sel].mean(0)
            r = m / a
            ratios[kind][ph] = float(f"{np.exp(np.log(r).mean()):.4g}")
            detail[kind][ph] = {"measured_s": [float(f"{v:.4g}") for v in m], "analytic_s": [float(f"{v:.4g}") for v in a],
                                "ratio": [float(f"{v:.4g}") for v in r]}
    return ratios, detail
