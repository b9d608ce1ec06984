"""`splitrl-profiles`: everything about profiles, one command.

    show MODEL DEVICE [--cloud C] | show --scenario NAME    per-layer / per-sub-block cost, memory fit, bytes
    validate [PATH]                                         check every profile file against its schema
    build MODEL DEVICE | build --shipped                    write analytic (roofline) cost tables
    host [--out FILE]                                       describe this machine as a device file
    list                                                    known models and devices
    measure cost|ppl [...]                                  measure a real model on this host (PyTorch;
                                                            splitrl.profiling, `measure cost --help`)
    plot [...]                                              ΔPPL vs boundary of a measured table (PNG)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from rich.console import Console

from splitrl.profiles.analytic import analytic_costs
from splitrl.profiles.calibration import CALIBRATION_SCHEMA, calibration_for, load_calibration
from splitrl.profiles.errors import ProfileError
from splitrl.profiles.formats import WEIGHT_FORMATS
from splitrl.profiles.reader import read_document
from splitrl.profiles.report import make_console
from splitrl.profiles.schema import COSTS_SCHEMA, DEVICE_SCHEMA, MODEL_SCHEMA, PPL_SCHEMA, Device, ModelArch
from splitrl.profiles.store import (
    costs_path,
    data_root,
    list_devices,
    list_models,
    load_costs_file,
    load_device,
    load_model,
    load_ppl,
    write_json,
)
from splitrl.profiles.table_schema import CostTable

# Analytic tables shipped in splitrl/profiles_data/costs/analytic (regenerate with `splitrl-profiles build --shipped`):
# the Splitwise settings (three models on three edge devices in three weight formats, A100 cloud), the
# embedded default (SmolLM2 on this host in fp32 as PyTorch runs it, A100 cloud) and H100 clouds.
SPLITWISE_MODELS = ("gpt2-xl", "llama-2-7b", "llama-2-13b")
SPLITWISE_EDGES = ("jetson-orin-nx-16gb", "galaxy-s23", "raspberry-pi-5")
SHIPPED_ANALYTIC = (
    [(m, e, f) for m in SPLITWISE_MODELS for e in SPLITWISE_EDGES for f in ("fp16", "int8", "int4")]
    + [(m, c, "fp16") for m in (*SPLITWISE_MODELS, "smollm2-135m") for c in ("a100-80gb", "h100-80gb")]
    + [("smollm2-135m", "this-host", f) for f in ("fp32", "int8", "int4")]
    + [("smollm2-135m", e, f) for e in SPLITWISE_EDGES for f in ("fp16", "int4")]
)


def validate_file(path: Path, root: Path | None = None) -> str:
    """Validate one profile file by its `schema` field; returns a one-line description."""
    doc = read_document(path)
    schema = doc.get("schema")
    if schema == MODEL_SCHEMA:
        m = ModelArch.from_dict(doc, path)
        return f"model {m.name}: {m.n_layers} layers, {m.total_params() / 1e6:,.1f} M params"
    if schema == DEVICE_SCHEMA:
        d = Device.from_dict(doc, path)
        return f"device {d.name} ({d.role})"
    if schema in (COSTS_SCHEMA, PPL_SCHEMA):
        name = doc.get("model")
        if not isinstance(name, str):
            raise ProfileError(path, "model", name, "must name a model in splitrl/profiles_data/models")
        model = load_model(name, root)
        if schema == PPL_SCHEMA:
            t = load_ppl(model, path=path)
            return f"ppl table {t.model}: sweeps {', '.join(t.sweeps)}"
        t = load_costs_file(path, model)
        return f"cost table {t.model} on {t.device} ({t.weight_format}, {t.provenance['kind']})"
    if schema == CALIBRATION_SCHEMA:
        c = load_calibration(path)
        return f"calibration of {c.model} on {c.device}: applied to {', '.join(c.devices)}"
    raise ProfileError(path, "schema", schema,
                       f"must be one of {[MODEL_SCHEMA, DEVICE_SCHEMA, COSTS_SCHEMA, PPL_SCHEMA, CALIBRATION_SCHEMA]}")


def validate_tree(path: Path | None = None, console: Console | None = None) -> list[ProfileError]:
    console = console or Console()
    root = data_root(path if path is not None and path.is_dir() else None)
    files = [path] if path is not None and path.is_file() else sorted(
        p for p in (path or root).rglob("*") if p.suffix in (".yaml", ".yml", ".json") and p.parent.name != "traces")
    errors = []
    for f in files:
        try:
            console.print(f"[green]ok[/]   {f}: {validate_file(f, root if path is None or path.is_dir() else None)}")
        except ProfileError as e:
            errors.append(e)
            console.print(f"[red]FAIL[/] {e}")
    console.print(f"{len(files) - len(errors)} valid, {len(errors)} invalid")
    return errors


def analytic_table(model: str, device: str, weight_format: str, root=None) -> CostTable:
    """The analytic table as shipped: the roofline model, scaled by the calibration that applies to
    (model, device) if `calibration/*.json` has one (docs/profiles.md, "Calibration")."""
    m, d = load_model(model, root), load_device(device, root)
    cal = calibration_for(m.name, d.name, data_root(root))
    table = analytic_costs(m, d, weight_format, calibration=cal.ratios if cal else None)
    if cal:
        table.provenance["calibration_file"] = Path(cal.path).name
    return table


def build(model: str, device: str, weight_format: str, root=None) -> Path:
    table = analytic_table(model, device, weight_format, root)
    return write_json(costs_path(table.model, table.device, weight_format, "analytic", root), table.to_dict())


def show(a, parser, console) -> None:
    from splitrl.profiles.report import show_profile
    if a.scenario:
        from splitrl.env.scenario import load_scenario_dict
        d, _ = load_scenario_dict(a.scenario)
        a.model, a.device, a.cloud, a.weight_format = d["model"], d["edge"], d["cloud"], d["edge_weight_format"]
        a.cloud_weight_format, a.context, a.kind = d["cloud_weight_format"], d["context"], d["table_kind"]
        if a.context == "auto":   # the workload's longest request, as the scenario reserves it
            from splitrl.env.scenario import make_with_info
            a.context = make_with_info(a.scenario)[2].context
    elif not (a.model and a.device):
        parser.error("show needs MODEL DEVICE or --scenario NAME")
    show_profile(load_model(a.model), load_device(a.device), load_device(a.cloud) if a.cloud else None,
                 a.weight_format, a.cloud_weight_format, a.context, a.kind, console)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="splitrl-profiles", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="per-layer and per-sub-block cost, memory fit and bytes crossing each boundary")
    s.add_argument("model", nargs="?")
    s.add_argument("device", nargs="?", help="the edge device")
    s.add_argument("--scenario", help="take model, devices, weight formats, context and table kind from a scenario "
                   "(a name in splitrl/conf/scenario or a YAML path)")
    s.add_argument("--cloud", help="the cloud device (default: none, edge-only)")
    s.add_argument("--weight-format", default="fp16", choices=WEIGHT_FORMATS, help="edge weight format")
    s.add_argument("--cloud-weight-format", default="fp16", choices=WEIGHT_FORMATS)
    s.add_argument("--context", type=int, default=512, help="tokens of context for costs and KV memory")
    s.add_argument("--kind", default="best", choices=("best", "measured", "analytic"))
    v = sub.add_parser("validate", help="validate every profile file (or one file / directory)")
    v.add_argument("path", nargs="?", type=Path)
    b = sub.add_parser("build", help="write the analytic cost table of MODEL on DEVICE")
    b.add_argument("model", nargs="?")
    b.add_argument("device", nargs="?")
    b.add_argument("--weight-format", default="fp16", choices=WEIGHT_FORMATS)
    b.add_argument("--shipped", action="store_true", help="regenerate every shipped analytic table")
    h = sub.add_parser("host", help="describe this machine as a device file (reads /proc, measures bandwidth)")
    h.add_argument("--out", type=Path, help="write YAML here (default: print)")
    h.add_argument("--power-active-per-core", type=float, default=3.75)
    h.add_argument("--power-idle-per-core", type=float, default=1.0)
    h.add_argument("--radio-tx", type=float, default=1.0)
    sub.add_parser("list", help="list known models and devices")
    sub.add_parser("measure", add_help=False, help="measure a real model's cost (measure cost) or PPL degradation "
                   "(measure ppl) on this host; `splitrl-profiles measure cost --help`")
    sub.add_parser("plot", add_help=False, help="PNG of ΔPPL vs boundary of a measured PPL table")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["measure"], ["plot"]):   # the measuring CLI has its own parser (and needs torch)
        from splitrl.profiling.cli import main as measure_main
        return measure_main(argv[1:] if argv[0] == "measure" else argv)
    a = p.parse_args(argv)
    console = make_console()
    try:
        if a.cmd == "show":
            show(a, p, console)
        elif a.cmd == "validate":
            return 1 if validate_tree(a.path, console) else 0
        elif a.cmd == "build":
            jobs = SHIPPED_ANALYTIC if a.shipped else [(a.model, a.device, a.weight_format)]
            if not a.shipped and not (a.model and a.device):
                p.error("build needs MODEL DEVICE or --shipped")
            for job in jobs:
                console.print(f"wrote {build(*job)}")
        elif a.cmd == "host":
            from splitrl.profiles.host import describe_host
            doc = describe_host(a.power_active_per_core, a.power_idle_per_core, a.radio_tx)
            Device.from_dict(doc, "<this host>")
            text = yaml.safe_dump(doc, sort_keys=False, width=200)
            if a.out:
                a.out.write_text(text)
                console.print(f"wrote {a.out}")
            else:
                print(text)
        elif a.cmd == "list":
            console.print("models: " + ", ".join(list_models()) + "\ndevices: " + ", ".join(list_devices()))
    except ProfileError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
