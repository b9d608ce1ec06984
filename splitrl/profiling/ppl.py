"""Perplexity of a real model when the hidden state crossing the edge/cloud boundary is damaged.

Boundary b: the edge runs layers < b, the hidden state entering layer b crosses (damaged by
`damage.damage`), the cloud runs layers >= b. Each window's prefix activations are computed once
(an unsplit forward with hidden states, which also gives the unsplit PPL); a cell then reruns only
layers >= b through the model's own modules, so an undamaged split is the same computation as the
unsplit model, bit for bit (checked at start).

Partial layer (cloud_fraction c, a fraction of the boundary layer's A attention units on the cloud,
the last round(c*A) of them): the edge has run layers < b and holds the true h_b. Its attention units
run on h_b; the cloud's units run on the received D(h_b). Two tensors cross, each damaged alike:
h_b (the cloud units' input and the residual) and the edge units' partial sum P_e. The cloud merges
    h_mid = D(h_b) + D(P_e) + sum_cloud attn_u(norm(D(h_b)))
and runs layer b's FFN and layers > b. c = 1 is the plain boundary b.

Seeds: seed s evaluates window group s (disjoint windows spread over the corpus) with damage drawn
from a generator seeded by (cell, s); ΔPPL_s = PPL_damaged(group s) - PPL_unsplit(group s). The
table stores mean and sample std (ddof=1) over seeds, so the spread covers both the text and the
random damage (quantisation alone is deterministic).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from splitrl.lm.damage import Damage, damage, seeded_generator
from splitrl.lm.units import decoder_layers, head_mask
from splitrl.profiles.formats import TX_FORMATS
from splitrl.profiles.schema import ModelArch
from splitrl.profiles.table_schema import PPLSweep

# How the PPL table is measured, written into its provenance (packet_loss takes the grid's packet size)
PPL_METHOD = {
    "seeds_mean": "seed s = window group s (disjoint, spread over the corpus) + damage RNG seeded by (cell, s); "
                  "ΔPPL_s = PPL_damaged - PPL_unsplit on group s; mean and std (ddof=1) over seeds",
    "boundary_0_and_L": "no hidden state crosses (token ids only, never damaged): 0 by construction, not measured",
    "damage_order": "quantise-dequantise (format) -> additive noise -> zero-fill lost packets (splitrl/lm/damage.py)",
    "formats": "fp16 cast; int8/int4 symmetric absmax in groups of 64 along d_model, fp16 scale per group",
    "packet_loss": "the window's crossing tensor [tokens, d_model] serialised token-major ([fp16 scale][payload] per "
                   "group for int8/int4) in packets of {packet_bytes} B, each lost independently with the "
                   "residual loss rate after retransmission; a value whose payload or group scale is lost is zero-filled",
    "noise": "additive Gaussian, variance = mean(s^2) / 10^(snr_db/10), s = the sent (dequantised) tensor of one window",
    "cloud_fraction": "the last round(c*A) attention units of layer b run on the cloud on the received D(h_b); the "
                      "edge's units run on the true h_b and their partial sum crosses too, damaged alike; the cloud "
                      "merges D(h_b) + D(P_edge) + P_cloud and runs layer b's FFN; c = 1 is the plain boundary",
    "combined": "format x loss cells: compare with format + loss sweeps to see how well deltas add",
}


@dataclasses.dataclass(frozen=True)
class PPLGrid:
    boundaries: tuple                       # measured boundaries, each in 1..L-1
    formats: tuple = TX_FORMATS
    losses: tuple = (0.01, 0.05, 0.2)        # residual packet loss, format fp16
    snrs_db: tuple = (10.0, 20.0, 30.0)      # additive Gaussian noise, format fp16
    cloud_format: str = "int4"               # format held fixed in the cloud_fraction sweep
    combined_formats: tuple = ("int4",)      # int8 alone is nearly lossless: int4 is the informative cross
    combined_losses: tuple = (0.05,)
    window: int = 256                        # tokens per window
    windows_per_seed: int = 3
    seeds: int = 3
    packet_bytes: int = 1024


def default_boundaries(n_layers: int) -> tuple:
    """~8 boundaries, denser early (where damage is expected to hurt most)."""
    L = n_layers
    picks = {1, 2, 4, 8, round(0.4 * L), int(0.55 * L), int(0.75 * L), L - 1}
    return tuple(sorted(b for b in picks if 1 <= b <= L - 1))


def quick_grid(n_layers: int) -> PPLGrid:
    return PPLGrid(boundaries=tuple(sorted({1, max(1, n_layers - 1)})), losses=(0.1,), snrs_db=(10.0,),
                   combined_formats=("int8", "int4"), combined_losses=(0.1,), window=32, windows_per_seed=2, seeds=3)


def cloud_fractions(arch: ModelArch) -> tuple:
    return tuple(i / arch.attn_units for i in range(arch.attn_units + 1))


@dataclasses.dataclass(frozen=True)
class Cell:
    """One damage setting at one boundary; cloud_fraction 1 (or None) is the plain boundary."""
    boundary: int
    format: str = "fp16"
    loss: float = 0.0
    snr_db: float | None = None
    cloud_fraction: float = 1.0

    @property
    def key(self) -> str:
        return (f"b={self.boundary}|fmt={self.format}|loss={self.loss:g}|snr={self.snr_db}"
                f"|cf={self.cloud_fraction:.6g}")


def grid_cells(grid: PPLGrid, arch: ModelArch) -> dict:
    """sweep name -> (axes, fixed, {index tuple: Cell}) for every measured cell (deduplicated by key later)."""
    B = grid.boundaries
    out = {
        "format": ({"boundary": B, "format": grid.formats}, {},
                   {(i, j): Cell(b, f) for i, b in enumerate(B) for j, f in enumerate(grid.formats)}),
        "loss": ({"boundary": B, "loss": grid.losses}, {"format": "fp16", "packet_bytes": grid.packet_bytes},
                 {(i, j): Cell(b, "fp16", loss=x) for i, b in enumerate(B) for j, x in enumerate(grid.losses)}),
        "snr_db": ({"boundary": B, "snr_db": grid.snrs_db}, {"format": "fp16"},
                   {(i, j): Cell(b, "fp16", snr_db=x) for i, b in enumerate(B) for j, x in enumerate(grid.snrs_db)}),
        "cloud_fraction": ({"boundary": B, "cloud_fraction": cloud_fractions(arch)}, {"format": grid.cloud_format},
                           {(i, j): Cell(b, grid.cloud_format, cloud_fraction=c)
                            for i, b in enumerate(B) for j, c in enumerate(cloud_fractions(arch))}),
        "combined": ({"boundary": B, "format": grid.combined_formats, "loss": grid.combined_losses},
                     {"packet_bytes": grid.packet_bytes},
                     {(i, j, k): Cell(b, f, loss=x) for i, b in enumerate(B)
                      for j, f in enumerate(grid.combined_formats) for k, x in enumerate(grid.combined_losses)}),
    }
    return out


# ---- the split forward -------------------------------------------------------------------------
class _BoundaryLayer(torch.nn.Module):
    """Layer b of the cloud's stack: damages what crosses and, for a partial layer, merges the
    edge's attention units (run on the true h_b) with the cloud's (run on the received tensor)."""

    def __init__(self, layer, arch: ModelArch, cell: Cell | None, gen: torch.Generator, packet_bytes: int):
        super().__init__()
        self.layer, self.arch, self.cell, self.gen = layer, arch, cell, gen
        self.dmg = None if cell is None else Damage(cell.format, cell.loss, cell.snr_db, packet_bytes)
        self.attention_type = getattr(layer, "attention_type", None)  # some models route masks by it

    def forward(self, hidden_states, **kw):
        if self.cell is None:
            return self.layer(hidden_states, **kw)
        received = damage(hidden_states, self.dmg, self.gen)
        A = self.arch.attn_units
        n_cloud = round(self.cell.cloud_fraction * A)
        if n_cloud == A:
            return self.layer(received, **kw)
        lay = self.layer
        edge = self._partial(hidden_states, range(0, A - n_cloud), kw)
        h_mid = received + damage(edge, self.dmg, self.gen)
        if n_cloud:
            h_mid = h_mid + self._partial(received, range(A - n_cloud, A), kw)
        if lay.self_attn.o_proj.bias is not None:
            h_mid = h_mid + lay.self_attn.o_proj.bias  # added once, on the cloud
        return h_mid + lay.mlp(lay.post_attention_layernorm(h_mid))

    def _partial(self, x, units, kw):
        """Partial sum (without o_proj bias) of attention `units` on x: o_proj sees only their heads."""
        attn = self.layer.self_attn
        mask = head_mask(self.arch, list(units), x.dtype)
        handle = attn.o_proj.register_forward_pre_hook(lambda _m, args: (args[0] * mask,))
        try:
            out = attn(hidden_states=self.layer.input_layernorm(x), **kw)[0]
        finally:
            handle.remove()
        return out - attn.o_proj.bias if attn.o_proj.bias is not None else out


def _nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Summed next-token negative log-likelihood of a batch of windows."""
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1),
                                 reduction="sum"))


class SplitEvaluator:
    """Holds the windows, their unsplit NLL and prefix activations, and evaluates damaged cells."""

    def __init__(self, model, arch: ModelArch, windows: torch.Tensor, seeds: int, boundaries, packet_bytes: int):
        self.model, self.arch, self.packet_bytes = model, arch, packet_bytes
        self.layers = decoder_layers(model)
        n = windows.shape[0]
        if n < seeds:
            raise ValueError(f"{n} windows cannot make {seeds} disjoint seed groups: use a longer corpus, "
                             "a smaller --window or fewer --seeds")
        self.groups = [windows[s::seeds][: n // seeds] for s in range(seeds)]
        self.tokens = [int(g[:, 1:].numel()) for g in self.groups]
        self.clean, self.prefix = [], []
        with torch.inference_mode():
            for g in self.groups:
                out = model(input_ids=g, use_cache=False, output_hidden_states=True)
                self.clean.append(_nll(out.logits, g))
                self.prefix.append({b: out.hidden_states[b].clone() for b in boundaries})

    def ppl(self, nll: float, seed: int) -> float:
        return math.exp(nll / self.tokens[seed])

    @property
    def baseline_ppl(self) -> float:
        return math.exp(sum(self.clean) / sum(self.tokens))

    def split_nll(self, boundary: int, cell: Cell | None, seed: int) -> float:
        """NLL of group `seed` with the boundary at `boundary` and `cell`'s damage (None: undamaged)."""
        gen = seeded_generator(cell.key if cell else "clean", seed)
        inner = self.model.model
        original = inner.layers
        suffix = [_BoundaryLayer(self.layers[boundary], self.arch, cell, gen, self.packet_bytes)]
        inner.layers = torch.nn.ModuleList(suffix + self.layers[boundary + 1:])
        try:
            with torch.inference_mode():
                out = self.model(inputs_embeds=self.prefix[seed][boundary], use_cache=False)
        finally:
            inner.layers = original
        return _nll(out.logits, self.groups[seed])

    def check_undamaged_split(self, boundary: int) -> tuple[float, float]:
        """(unsplit NLL, undamaged split NLL) of group 0: they must be equal (same computation)."""
        return self.clean[0], self.split_nll(boundary, None, 0)

    def measure(self, cell: Cell, seed: int) -> dict:
        nll = self.split_nll(cell.boundary, cell, seed)
        if not math.isfinite(nll):
            raise FloatingPointError(f"cell {cell.key} seed {seed}: the damaged model gave a non-finite NLL")
        clean = self.ppl(self.clean[seed], seed)
        return {"nll": nll, "tokens": self.tokens[seed], "ppl": self.ppl(nll, seed), "ppl_clean": clean,
                "delta": self.ppl(nll, seed) - clean}


def assemble_sweeps(cells_by_sweep: dict, results: dict, n_layers: int, seeds: int) -> dict:
    """PPLSweeps from measured cells. Boundaries 0 and L (nothing but token ids crosses, never
    damaged) are added as exact zeros to every sweep except cloud_fraction (a partial layer 0 is a
    real split, not cloud-only)."""
    sweeps = {}
    for name, (axes, fixed, cells) in cells_by_sweep.items():
        shape = tuple(len(v) for v in axes.values())
        per_seed = np.zeros(shape + (seeds,))
        for idx, cell in cells.items():
            per_seed[idx] = [results[(cell.key, s)]["delta"] for s in range(seeds)]
        mean, std = per_seed.mean(-1), per_seed.std(-1, ddof=1) if seeds > 1 else np.zeros(shape)
        b = np.asarray(axes["boundary"], dtype=float)
        if name != "cloud_fraction":
            pad = [(1, 1)] + [(0, 0)] * (len(shape) - 1)
            mean, std = np.pad(mean, pad), np.pad(std, pad)
            b = np.concatenate([[0.0], b, [float(n_layers)]])
        ax = {k: (tuple(v) if k == "format" else np.asarray(v, dtype=float)) for k, v in axes.items()}
        ax["boundary"] = b
        sweeps[name] = PPLSweep(axes=ax, mean=mean, std=std, fixed=dict(fixed))
    return sweeps
