"""`splitrl-profiles measure`: measure a real model's cost and PPL-degradation tables on this host.

    splitrl-profiles measure cost [--model PATH] [--device this-host] [--quick]   per-unit latency, memory, calibration
    splitrl-profiles measure ppl  [--model PATH] [--corpus FILE] [--quick]        ΔPPL when the boundary tensor is damaged
    splitrl-profiles plot [--model PATH]                                         ΔPPL vs boundary, one panel per damage

--model defaults to the embedded SmolLM2-135M GGUF; give a Hugging Face model directory or a .gguf to
profile your own (its models/<name>.yaml is derived from the config when missing). Results go to
--out (default: the profiles_data directory) in the validated schema; both measuring commands are
resumable: finished cells are kept in a .cells.jsonl next to the table and reused on rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from splitrl.profiles.errors import ProfileError
from splitrl.profiles.report import make_console
from splitrl.profiles.store import data_root, load_device, write_json
from splitrl.profiles.table_schema import CostTable, PPLTable

DEFAULT_NAME = "smollm2-135m"


class CliError(RuntimeError):
    pass


# ---- shared setup ------------------------------------------------------------------------------
def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process (tests call main() several times)


def _model_name(path: str | None, name: str | None) -> str:
    if name:
        return name
    if path is None:
        return DEFAULT_NAME
    p = Path(path).expanduser()
    stem = p.stem if p.suffix == ".gguf" else p.name
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-") or "model"


def _load(a, console: Console):
    """(loaded model, arch) with the model YAML written under --out when it was missing."""
    from splitrl.lm.model import load_causal_lm
    from splitrl.lm.units import decoder_layers, resolve_arch

    console.print(f"loading {a.model or 'the embedded SmolLM2-135M GGUF'} ...")
    lm = load_causal_lm(a.model)
    decoder_layers(lm.model)
    name = _model_name(a.model, a.name)
    arch, doc = resolve_arch(lm.model.config, name, lm.source, a.out / "models", a.attn_units, a.ffn_chunks)
    if doc is not None:
        path = a.out / "models" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False, width=200))
        console.print(f"wrote {path} (derived from the model's config)")
    return lm, arch


def _host() -> str:
    from splitrl.profiles.host import _cpuinfo

    info = _cpuinfo()
    return (f"{info.get('model name', platform.processor() or 'unknown CPU')}, "
            f"{len(os.sched_getaffinity(0))} usable cores, {platform.system()} {platform.release()}")


def _versions() -> dict:
    import torch
    import transformers

    import splitrl
    return {"splitrl": getattr(splitrl, "__version__", "0.1.0"), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _provenance(a, extra: dict) -> dict:
    return {"kind": "measured", "host": _host(), "tool_versions": _versions(),
            "date": datetime.date.today().isoformat(), "command": "splitrl-profiles measure " + shlex.join(a.argv),
            "threads": a.threads, **extra}


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def _validated_write(path: Path, doc: dict, cls, arch) -> None:
    """Write only what reads back valid: round-trip through JSON and the schema first."""
    cls.from_dict(json.loads(json.dumps(doc)), arch, path)
    write_json(path, doc)


# ---- cost --------------------------------------------------------------------------------------
def cmd_cost(a, console: Console) -> int:
    from splitrl.profiling.cells import CellStore
    from splitrl.profiling.cost import (
        PHASES,
        QUICK_COST,
        CostGrid,
        CostProbe,
        build_table,
        calibration_ratios,
        spread_and_ratio,
    )

    t0 = time.perf_counter()
    _set_threads(a.threads)
    device = load_device(a.device)
    grid = QUICK_COST if a.quick else CostGrid()
    if a.contexts:
        grid = dataclasses.replace(grid, contexts=tuple(sorted(set(a.contexts))))
    if a.repeats:
        grid = dataclasses.replace(grid, repeats=a.repeats, decode_repeats=max(a.repeats, grid.decode_repeats))
    lm, arch = _load(a, console)
    probe = CostProbe(lm.model, arch)
    out = a.out / "costs" / "measured" / f"{arch.name}__{device.name}__fp32.json"
    store = CellStore(out.with_suffix(".cells.jsonl"), {"cells": 2, "model": lm.source,
                                                         "grid": dataclasses.asdict(grid),
                                                         "threads": a.threads, "host": _host()})
    jobs = {(ph, c): (f"{ph}|{c}", f"timing {ph} @ {c}", partial(probe.measure, ph, c, grid))
            for ph in PHASES for c in grid.contexts}
    points = {k: r["result"] for k, r in measure_resumable(store, jobs, "timing units", console).items()}
    checks = spread_and_ratio(arch, grid.contexts, points)
    prov = _provenance(a, {
        "device_file": Path(device.path).name, "interop_threads": 1, "repeats": grid.repeats,
        "decode_repeats": grid.decode_repeats, "warmup": grid.warmup, "statistic": "median of the repetitions",
        "method": "each unit runs alone on its own weight slices (splitrl/lm/units.py); one layer row measured "
                  "cycling through all layers (cold weights) and broadcast to every layer; repetitions interleave all "
                  "units, the whole layer and the blocks in shuffled order; prefill = call on [1, S, d] / S; decode = one "
                  "token against a preallocated KV cache of `context` tokens; see docs/profiles.md",
        "energy": f"measured time x power_w.active = {device.power_active_w} W of {Path(device.path).name}: "
                  "no power meter inside a VM, so the joules are an assumption scaled by measured time",
        "memory": "weight_bytes = bytes of the unit's fp32 weight tensors as they run; kv_bytes_per_token = K and V "
                  "bytes the unit caches per token, fp32 as PyTorch runs it",
        "measuring_s": round(sum(store.get(f"{ph}|{c}")["seconds"] for ph, c in jobs), 1),
        **checks})
    table = build_table(arch, device, grid.contexts, points, probe.memory(), prov)
    _validated_write(out, table.to_dict(), CostTable, arch)
    console.print(f"wrote {out}")
    _print_ratio(console, grid.contexts, checks["layer_vs_units"])
    if not a.no_calibration:
        _calibrate(a, console, arch, device, table, calibration_ratios)
    console.print(f"cost done in {time.perf_counter() - t0:.0f} s (threads {a.threads})")
    return 0


def _print_ratio(console: Console, contexts, lvu: dict) -> None:
    t = Table(title="a layer measured whole vs the sum of its units measured one by one (µs per token)")
    t.add_column("phase")
    for c in contexts:
        t.add_column(f"ctx {c}", justify="right")
    for ph, v in lvu.items():
        t.add_row(f"{ph} whole", *[f"{x * 1e6:.1f}" for x in v["layer_s"]])
        t.add_row(f"{ph} units", *[f"{x * 1e6:.1f}" for x in v["units_sum_s"]])
        t.add_row(f"{ph} ratio", *[f"{x:.2f}" for x in v["ratio_units_over_layer"]])
    console.print(t)


def _calibrate(a, console: Console, arch, device, table, calibration_ratios) -> None:
    from splitrl.profiles.calibration import CALIBRATION_SCHEMA, Calibration

    cores = len(os.sched_getaffinity(0))
    # The roofline reference gets the share of peak FLOP/s the measurement could use (threads of cores).
    share = min(1.0, a.threads / cores)
    ref = dataclasses.replace(device, peak_flops={k: v * share for k, v in device.peak_flops.items()})
    ratios, detail = calibration_ratios(arch, ref, table)
    t = Table(title=f"analytic (roofline, {share:.2g} of peak FLOP/s) vs measured, geometric mean over contexts "
                    f"{list(table.context_grid.astype(int))}")
    for col in ("unit kind", "phase", "analytic µs/token", "measured µs/token", "measured / analytic"):
        t.add_column(col, justify="right" if "µs" in col or "/" in col else "left")
    for kind, per in detail.items():
        for ph, d in per.items():
            gm = lambda xs: float(np.exp(np.mean(np.log(xs))))  # noqa: E731
            t.add_row(kind, ph, f"{gm(d['analytic_s']) * 1e6:.2f}", f"{gm(d['measured_s']) * 1e6:.2f}",
                      f"{ratios[kind][ph]:.3g}")
    console.print(t)
    devices = [device.name] + [d for d in a.calibrate_also if d != device.name]
    doc = {"schema": CALIBRATION_SCHEMA, "device": device.name, "model": arch.name, "weight_format": "fp32",
           "ratios": ratios, "applies_to": {"devices": devices, "models": [arch.name]}, "detail": detail,
           "provenance": {**{k: table.provenance[k] for k in ("host", "tool_versions", "date", "command", "threads")},
                          "cost_table": f"costs/measured/{arch.name}__{device.name}__fp32.json",
                          "reference": f"analytic_costs(model, {device.name} with peak_flops x {share:.3g} "
                                       f"({a.threads} threads of {cores} cores), fp32, the measured context grid)",
                          "ratio": "measured / analytic per unit kind and phase, geometric mean over contexts "
                                   "(and over the units of a kind)"}}
    name = device.name if arch.name == DEFAULT_NAME else f"{device.name}__{arch.name}"
    path = a.out / "calibration" / f"{name}.json"
    Calibration.from_dict(json.loads(json.dumps(doc)), path)
    write_json(path, doc)
    console.print(f"wrote {path} (applied to the analytic tables of {arch.name} on {', '.join(devices)} by "
                  "`splitrl-profiles build`)")


# ---- ppl ---------------------------------------------------------------------------------------
def _ppl_grid(a, arch):
    """The PPL grid of the command line (quick or the default), checked against the model."""
    from splitrl.profiling.ppl import PPLGrid, default_boundaries, quick_grid
    grid = quick_grid(arch.n_layers) if a.quick else PPLGrid(boundaries=default_boundaries(arch.n_layers))
    over = {k: v for k, v in dict(boundaries=a.boundaries and tuple(sorted(set(a.boundaries))), window=a.window,
                                  windows_per_seed=a.windows_per_seed, seeds=a.seeds, packet_bytes=a.packet_bytes).items() if v}
    grid = dataclasses.replace(grid, **over)
    bad = [b for b in grid.boundaries if not 1 <= b <= arch.n_layers - 1]
    if bad:
        raise CliError(f"--boundaries {bad}: a measured boundary must lie in 1..{arch.n_layers - 1} "
                       f"(0 and {arch.n_layers} carry token ids only and are 0 by construction)")
    if grid.seeds < 1:
        raise CliError(f"--seeds {grid.seeds}: need at least 1 (3 or more for a spread)")
    return grid


def measure_resumable(store, jobs: dict, title: str, console: Console) -> dict:
    """{job: {"result": ..., "seconds": ...}} for jobs {job: (store key, description, measure())}, each
    measured once: a cell already in the resumable store (a rerun after a crash) is reused."""
    results = {}
    with _progress(console) as bar:
        task = bar.add_task(title, total=len(jobs))
        for job, (key, description, measure) in jobs.items():
            if key not in store:
                bar.update(task, description=description)
                tc = time.perf_counter()
                store.put(key, {"result": measure(), "seconds": time.perf_counter() - tc})
            results[job] = store.get(key)
            bar.advance(task)
    return results


def cmd_ppl(a, console: Console) -> int:
    from splitrl.profiling.cells import CellStore
    from splitrl.profiling.corpus import load_text, text_digest, token_windows
    from splitrl.profiling.ppl import PPL_METHOD, SplitEvaluator, assemble_sweeps, grid_cells

    t0 = time.perf_counter()
    _set_threads(a.threads)
    text, corpus = load_text(a.corpus)  # an empty corpus fails before the model loads
    lm, arch = _load(a, console)
    grid = _ppl_grid(a, arch)
    windows = token_windows(lm.tokenizer, text, grid.window, grid.windows_per_seed * grid.seeds, corpus)
    console.print(f"corpus: {corpus}, {windows.shape[0]} windows of {grid.window} tokens, {grid.seeds} seeds")
    ev = SplitEvaluator(lm.model, arch, windows, grid.seeds, grid.boundaries, grid.packet_bytes)
    unsplit, split = ev.check_undamaged_split(grid.boundaries[0])
    if abs(unsplit - split) > 1e-6 * abs(unsplit):
        raise CliError(f"undamaged split at boundary {grid.boundaries[0]} gives NLL {split} but the unsplit model "
                       f"{unsplit}: this architecture does not run layer by layer as expected (not supported)")
    sweeps_cells = grid_cells(grid, arch)
    unique = {c.key: c for _, _, cells in sweeps_cells.values() for c in cells.values()}
    out = a.out / "ppl" / f"{arch.name}.json"
    fp = {"cells": 2, "model": lm.source, "corpus": text_digest(text), "window": grid.window,
          "windows": int(windows.shape[0]),
          "seeds": grid.seeds, "packet_bytes": grid.packet_bytes}
    store = CellStore(out.with_suffix(".cells.jsonl"), fp)
    jobs = {(c.key, s): (f"{c.key}|seed={s}", f"{c.key} seed {s}", partial(ev.measure, c, s))
            for c in unique.values() for s in range(grid.seeds)}
    cells = measure_resumable(store, jobs, "damaged cells", console)
    results = {k: {**r["result"], "seconds": r["seconds"]} for k, r in cells.items()}
    sweeps = assemble_sweeps(sweeps_cells, results, arch.n_layers, grid.seeds)
    prov = _provenance(a, {
        "corpus": corpus, "corpus_sha256_16": fp["corpus"], "window_tokens": grid.window,
        "windows": int(windows.shape[0]), "seeds": grid.seeds, "measured_boundaries": list(grid.boundaries),
        "baseline": f"unsplit model, PPL over all windows = {ev.baseline_ppl:.6g}; the undamaged split at boundary "
                    f"{grid.boundaries[0]} gives NLL {split!r} vs unsplit {unsplit!r} (same computation)",
        **PPL_METHOD, "packet_loss": PPL_METHOD["packet_loss"].format(packet_bytes=grid.packet_bytes),
        "measuring_s": round(sum(r["seconds"] for r in results.values()), 1)})
    table = PPLTable(model=arch.name, baseline_ppl=ev.baseline_ppl, sweeps=sweeps, provenance=prov)
    _validated_write(out, table.to_dict(), PPLTable, arch)
    console.print(f"wrote {out}")
    _print_ppl(console, table)
    console.print(f"ppl done in {time.perf_counter() - t0:.0f} s (threads {a.threads})")
    return 0


def _print_ppl(console: Console, table: PPLTable) -> None:
    for name, s in table.sweeps.items():
        axes = list(s.axes)
        t = Table(title=f"ΔPPL sweep {name} (baseline PPL {table.baseline_ppl:.3f}; fixed {s.fixed or '-'})")
        t.add_column("boundary")
        flat = s.mean.reshape(len(s.axes["boundary"]), -1)
        sd = s.std.reshape(flat.shape)
        combos = list(np.ndindex(*[len(s.axes[k]) for k in axes[1:]]))
        for combo in combos:
            t.add_column(" ".join(f"{k}={s.axes[k][i]:.3g}" if k != "format" else s.axes[k][i]
                                  for k, i in zip(axes[1:], combo, strict=True)), justify="right")
        for i, b in enumerate(s.axes["boundary"]):
            t.add_row(str(int(b)), *[f"{flat[i, j]:.3f} ± {sd[i, j]:.3f}" for j in range(flat.shape[1])])
        console.print(t)


# ---- plot --------------------------------------------------------------------------------------
def cmd_plot(a, console: Console) -> int:
    from splitrl.profiles.store import load_model, load_ppl
    from splitrl.profiling.plot import plot_ppl

    name = _model_name(a.model, a.name)
    arch = load_model(str(a.out / "models" / f"{name}.yaml"))
    table = load_ppl(arch, path=a.out / "ppl" / f"{name}.json")
    path = plot_ppl(table, arch, a.png)
    console.print(f"wrote {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splitrl-profiles measure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731

    def common(s, threads: int):
        s.add_argument("--model", help="HF model directory or .gguf file (default: the embedded SmolLM2-135M GGUF)")
        s.add_argument("--name", help="model name in profiles_data (default: smollm2-135m or the directory name)")
        s.add_argument("--out", type=Path, help="profiles directory to write into (default: profiles_data)")
        s.add_argument("--threads", type=int, default=threads, help=f"torch threads, fixed and recorded (default {threads})")
        s.add_argument("--quick", action="store_true", help="a tiny grid for tests (seconds)")
        s.add_argument("--attn-units", type=int, help="attention placement units per layer for a new model (default n_kv_heads)")
        s.add_argument("--ffn-chunks", type=int, default=4, help="FFN chunks per layer for a new model (default 4)")

    c = sub.add_parser("cost", help="time every unit (prefill/decode), memory, units-vs-layer ratio, calibration")
    common(c, 1)
    c.add_argument("--device", default="this-host", help="device file for power (default this-host; "
                   "run `splitrl-profiles host` on a new machine first)")
    c.add_argument("--contexts", type=ints, help="comma-separated context grid (default 32,64,128,256,512,1024)")
    c.add_argument("--repeats", type=int, help="timed repetitions per point (default 40 prefill, 200 decode)")
    c.add_argument("--calibrate-also", type=lambda s: [x for x in s.split(",") if x], default=[],
                   help="other devices whose analytic tables the calibration also scales (e.g. raspberry-pi-5)")
    c.add_argument("--no-calibration", action="store_true", help="skip writing calibration/<device>.json")
    q = sub.add_parser("ppl", help="ΔPPL of damaged boundary activations: format, loss, noise, partial layer")
    common(q, 1)
    q.add_argument("--corpus", help="UTF-8 text file (default: Python's pydoc topics, ~110k tokens)")
    q.add_argument("--boundaries", type=ints, help="comma-separated boundaries in 1..L-1 (default ~8, denser early)")
    q.add_argument("--window", type=int, help="tokens per window (default 256)")
    q.add_argument("--windows-per-seed", type=int, help="windows per seed group (default 3)")
    q.add_argument("--seeds", type=int, help="seeds = disjoint window groups + damage draws (default 3)")
    q.add_argument("--packet-bytes", type=int, help="packet size on the wire (default 1024)")
    g = sub.add_parser("plot", help="PNG of ΔPPL vs boundary, one panel per damage")
    g.add_argument("--model", help="as for ppl (selects the table by name)")
    g.add_argument("--name")
    g.add_argument("--out", type=Path, help="profiles directory to read (default: profiles_data)")
    g.add_argument("--png", type=Path, default=Path("docs/img/ppl_vs_boundary.png"))
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    a.argv = argv
    console = make_console()
    from splitrl.lm.model import ModelLoadError
    from splitrl.lm.units import UnsupportedModelError
    from splitrl.profiling.corpus import CorpusError
    try:
        a.out = (a.out or data_root()).resolve()
        if getattr(a, "threads", 1) < 1:
            raise CliError(f"--threads {a.threads}: must be >= 1")
        return {"cost": cmd_cost, "ppl": cmd_ppl, "plot": cmd_plot}[a.cmd](a, console)
    except (ModelLoadError, CorpusError, UnsupportedModelError, ProfileError, CliError) as e:
        # One line: the path, what is wrong, what to do (tracebacks are for bugs, not for bad input).
        console.print(Text.assemble(("error: ", "red"), str(e).splitlines()[0] if str(e) else type(e).__name__))
        return 2


if __name__ == "__main__":
    sys.exit(main())
