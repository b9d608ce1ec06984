"""ΔPPL vs boundary layer, one panel per damage sweep (matplotlib, PNG). No torch needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splitrl.profiles.schema import ModelArch
from splitrl.profiles.table_schema import PPLTable

PANELS = (("format", "format", "transmission format (quantise-dequantise)"),
          ("loss", "loss", "residual packet loss (fp16, zero-filled)"),
          ("snr_db", "snr_db", "additive Gaussian noise (fp16)"),
          ("cloud_fraction", "cloud_fraction", "partial boundary layer: share of attention units on the cloud"))


def _label(axis: str, v) -> str:
    if axis == "format":
        return str(v)
    if axis == "loss":
        return f"loss {v:g}"
    if axis == "snr_db":
        return f"SNR {v:g} dB"
    return f"cloud {v:.2f}"


def plot_ppl(table: PPLTable, arch: ModelArch, png: Path | str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if p[0] in table.sweeps]
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, axis, title) in zip(axes.flat, panels, strict=False):
        s = table.sweeps[name]
        b = np.asarray(s.axes["boundary"])
        for j, v in enumerate(s.axes[axis]):
            mean, std = s.mean[:, j], s.std[:, j]
            line, = ax.plot(b, mean, marker="o", ms=3.5, label=_label(axis, v))
            ax.fill_between(b, mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
        fixed = ", ".join(f"{k} {v}" for k, v in s.fixed.items() if k != "packet_bytes")
        ax.set_title(title + (f"\n[{fixed}]" if fixed else ""), fontsize=9)
        ax.set_xlabel(f"boundary b (edge runs layers < b, of {arch.n_layers})")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_ylabel("ΔPPL, mean ± std over seeds")
    fig.text(0.5, 0.005, f"baseline PPL {table.baseline_ppl:.2f}; symlog y axis (linear below 0.1); "
             "boundaries 0 and L carry token ids only (0 by construction)", ha="center", fontsize=8, color="0.3")
    fig.suptitle(f"{arch.display_name}: perplexity increase when the boundary activations are damaged", fontsize=11)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=130)
    plt.close(fig)
    return png
