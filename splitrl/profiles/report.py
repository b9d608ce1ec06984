"""Rich tables of a (model, edge, cloud) profile: per sub-block, per layer, memory fit, bytes crossing."""

from __future__ import annotations

import numpy as np
from rich.console import Console
from rich.table import Table

from splitrl.profiles.analytic import analytic_costs
from splitrl.profiles.errors import ProfileError
from splitrl.profiles.fit import boundary_bytes_per_token, check_fit, placement_memory
from splitrl.profiles.formats import TX_FORMATS
from splitrl.profiles.schema import Device, ModelArch
from splitrl.profiles.store import load_costs
from splitrl.profiles.table_schema import CostTable


def make_console() -> Console:
    """A console wide enough for the tables when output is piped (rich defaults to 80 columns)."""
    c = Console()
    return c if c.is_terminal else Console(width=160)


def cost_table(model: ModelArch, device: Device, weight_format: str, kind: str = "best") -> tuple[CostTable, str]:
    """The shipped table when there is one, else the analytic model computed now (and say which)."""
    try:
        t = load_costs(model, device.name, weight_format, kind)
        return t, f"{t.provenance['kind']} ({t.path})"
    except ProfileError:
        if kind == "measured":
            raise
        return analytic_costs(model, device, weight_format), "analytic (computed now; no shipped table)"


def _ctx_index(table: CostTable, context: int) -> int:
    return int(np.argmin(np.abs(table.context_grid - context)))


def _us(x: float) -> str:
    return f"{x * 1e6:,.1f}"


def _gb(x: float) -> str:
    return f"{x / 1e9:,.3f}"


def show_profile(model: ModelArch, edge: Device, cloud: Device | None, edge_format: str = "fp16",
                 cloud_format: str = "fp16", context: int = 512, kind: str = "best",
                 console: Console | None = None) -> dict:
    """Print the profile tables; returns the numbers shown (for tests and the main job)."""
    console = console or Console()
    fits = check_fit(model, edge, cloud, tuple(dict.fromkeys((edge_format, "fp16", "int8", "int4"))),
                     cloud_format, context)
    et, esrc = cost_table(model, edge, edge_format, kind)
    ct, csrc = cost_table(model, cloud, cloud_format, kind) if cloud is not None else (None, "-")
    ie = _ctx_index(et, context)
    ctx_shown = int(et.context_grid[ie])
    console.rule(f"[bold]{model.display_name}[/] on [bold]{edge.display_name}[/]"
                 + (f"  +  cloud [bold]{cloud.display_name}[/]" if cloud else ""))
    console.print(f"edge table: {esrc}\ncloud table: {csrc}\n"
                  f"{model.n_layers} layers, {model.total_params() / 1e6:,.1f} M params; placement units per layer: "
                  f"{', '.join(model.unit_names)}; prefill at {ctx_shown} tokens, decode with {ctx_shown} cached")

    ic = _ctx_index(ct, context) if ct else 0
    console.print(_sub_block_table(model, et, ct, ie, ic, edge_format, cloud_format))
    edge_mem, cloud_mem = placement_memory(model, edge_format, cloud_format, context)
    cross = boundary_bytes_per_token(model)
    lay = Table(title=f"Per layer and boundary k (edge runs layers < k): decode ms/token at context {ctx_shown}, "
                      f"memory at context {context}, bytes/token crossing after the edge part")
    for col in ("k", "edge decode", "cloud decode", "edge prefill", "cloud prefill", "edge GB", "cloud GB",
                "fits", *(f"{f} B/tok" for f in TX_FORMATS)):
        lay.add_column(col, justify="right")
    ed, cd = et.layer_s("decode")[:, ie], (ct.layer_s("decode")[:, ic] if ct else None)
    ep, cp = et.layer_s("prefill")[:, ie], (ct.layer_s("prefill")[:, ic] if ct else None)
    fit = fits[edge_format]
    for k in range(model.n_layers + 1):
        row = [str(k)]
        if k < model.n_layers:
            row += [f"{ed[k] * 1e3:.4f}", f"{cd[k] * 1e3:.4f}" if ct else "-",
                    f"{ep[k] * 1e3:.4f}", f"{cp[k] * 1e3:.4f}" if ct else "-"]
        else:
            row += ["(edge-only)", "", "", ""]
        row += [_gb(edge_mem[k]), _gb(cloud_mem[k]) if cloud else "-",
                "[green]yes[/]" if fit[k] else "[red]no[/]", *(f"{cross[f][k]:,.0f}" for f in TX_FORMATS)]
        lay.add_row(*row)
    console.print(lay)

    console.print(_fit_table(fits, edge, cloud, context))
    return {"fits": fits, "edge_table": et, "cloud_table": ct, "edge_memory": edge_mem, "cloud_memory": cloud_mem,
            "bytes_per_token": cross}


def _ranges(ks: np.ndarray) -> str:
    out, start = [], ks[0]
    for a, b in zip(ks, list(ks[1:]) + [None], strict=True):
        if b is None or b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(out)


def _sub_block_table(model: ModelArch, et, ct, ie: int, ic: int, edge_format: str, cloud_format: str) -> Table:
    """Per placement unit of layer 0 and per model block: parameters, memory, prefill and decode time."""
    sub = Table(title=f"Per sub-block, layer 0 (µs per token; weights in {edge_format} on edge, "
                      f"{cloud_format} on cloud)")
    for col in ("unit", "params", "edge MB", "edge prefill", "edge decode", "cloud prefill", "cloud decode",
                "KV B/token"):
        sub.add_column(col, justify="right" if col != "unit" else "left")
    params = model.unit_params()
    for u, name in enumerate(model.unit_names):
        sub.add_row(name, f"{params[u]:,.0f}", f"{et.weight_bytes[0, u] / 1e6:,.2f}",
                    _us(et.prefill_s[0, u, ie]), _us(et.decode_s[0, u, ie]),
                    _us(ct.prefill_s[0, u, ic]) if ct else "-", _us(ct.decode_s[0, u, ic]) if ct else "-",
                    f"{et.kv_bytes_per_token[0, u]:,.0f}")
    for b, blk in et.blocks.items():
        sub.add_row(f"[dim]{b}[/]", f"{model.block_params()[b]:,.0f}", f"{blk.weight_bytes / 1e6:,.2f}",
                    _us(blk.prefill_s[ie]), _us(blk.decode_s[ie]),
                    _us(ct.blocks[b].prefill_s[ic]) if ct else "-", _us(ct.blocks[b].decode_s[ic]) if ct else "-", "0")
    return sub


def _fit_table(fits: dict, edge: Device, cloud: Device | None, context: int) -> Table:
    """Per edge weight format: does edge-only fit, which boundaries fit."""
    summary = Table(title=f"Memory fit: edge {_gb(edge.memory_bytes)} GB usable"
                          + (f", cloud {_gb(cloud.memory_bytes)} GB" if cloud else "") + f", context {context}")
    for col in ("edge weights", "edge-only fits", "feasible boundaries k", "most layers on edge"):
        summary.add_column(col)
    for f, ok in fits.items():
        ks = np.flatnonzero(ok)
        summary.add_row(f, "[green]yes[/]" if ok[-1] else "[red]no[/]", _ranges(ks) if len(ks) else "[red]none[/]",
                        str(ks.max()) if len(ks) else "-")
    return summary
