"""`splitrl-bench`: throughput benchmarks, `train` (splitrl.bench.train), `env` (splitrl.bench.env) and
`all --profile cpu|gpu` (splitrl.bench.all: env, training and compile in one process, one JSON).
Subcommands register in SUBCOMMANDS (add one with `add_<name>(subparsers)` and a `run_<name>(args)`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from splitrl.bench.all import add_all, run_all
from splitrl.bench.train import add_train, resolve_device, run_train


def add_env(subparsers) -> None:
    p = subparsers.add_parser("env", help="random-policy rollout steps/s of the split env (or a fleet) beside "
                                          "gymnax CartPole-v1")
    p.add_argument("--scenario", default="default")
    p.add_argument("--fleet", default=None, help="a fleet (splitrl/conf/fleet name or YAML path): measure it in "
                                                 "device-steps/s instead of the single-device scenario")
    p.add_argument("--fleet-devices", type=int, default=64, help="with --fleet: N, overriding the file's n_devices")
    p.add_argument("--envs", type=int, nargs="+", default=None,
                   help="env counts (default 1 16 256 4096 65536; with --fleet 4096 fleets)")
    p.add_argument("--steps", type=int, default=None, help="steps per rollout (default 200; with --fleet 20)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="jax platform to measure on (cpu, gpu); default: jax's default")
    p.add_argument("--out", type=Path, default=Path("bench_env.json"))


def run_env(args) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from splitrl.bench.env import bench_env, bench_fleet
    resolve_device(args.device)   # a clear error before any work when the platform is absent
    if args.fleet_devices < 1:
        raise SystemExit(f"splitrl-bench env: --fleet-devices {args.fleet_devices}: must be >= 1")
    if args.fleet:
        rows = bench_fleet(args.fleet, args.fleet_devices, tuple(args.envs or [4096]), args.steps or 20,
                           args.repeats, args.out, args.device)
        title = f"fleet {args.fleet} vs gymnax CartPole-v1 (envs x devices envs), random policy, jit+vmap+scan"
        cols = {"envs": "{:d}", "devices": "{:d}", "device_steps_per_s": "{:,.0f}"}
    else:
        rows = bench_env(args.scenario, tuple(args.envs or [1, 16, 256, 4096, 65536]), args.steps or 200,
                         args.repeats, args.out, args.device)
        title = f"split env ({args.scenario}) vs gymnax CartPole-v1, random policy, jit+vmap+scan"
        cols = {"envs": "{:d}", "split_steps_per_s": "{:,.0f}"}
    cols |= {"cartpole_steps_per_s": "{:,.0f}", "ratio": "{:.3f}", "compile_s": "{:.1f}",
             "cartpole_compile_s": "{:.1f}", "peak_rss_mb": "{:,.0f}"}
    table = Table(title=title)
    for col in cols:
        table.add_column(col.replace("_per_s", "/s").replace("_", " "), justify="right")
    for r in rows:
        table.add_row(*(fmt.format(r[col]) for col, fmt in cols.items()))
    Console(width=None if sys.stdout.isatty() else 140).print(table)   # a pipe's 80 columns cut the numbers
    print(f"wrote {args.out}")
    return {"rows": rows}


SUBCOMMANDS = {"train": (add_train, run_train), "env": (add_env, run_env), "all": (add_all, run_all)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="splitrl-bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # recorded in `all`'s JSON
    SUBCOMMANDS[args.command][1](args)


if __name__ == "__main__":
    main()
