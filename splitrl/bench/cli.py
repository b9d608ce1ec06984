"""`splitrl-bench`: throughput benchmarks, `train` (splitrl.bench.train) and `env` (splitrl.bench.env).
Subcommands register in SUBCOMMANDS (add one with `add_<name>(subparsers)` and a `run_<name>(args)`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from splitrl.bench.train import add_train, resolve_device, run_train


def add_env(subparsers) -> None:
    p = subparsers.add_parser("env", help="random-policy rollout steps/s of the split env beside gymnax CartPole-v1")
    p.add_argument("--scenario", default="default")
    p.add_argument("--envs", type=int, nargs="+", default=[1, 16, 256, 4096, 65536])
    p.add_argument("--steps", type=int, default=200, help="steps per rollout")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="jax platform to measure on (cpu, gpu); default: jax's default")
    p.add_argument("--out", type=Path, default=Path("bench_env.json"))


def run_env(args) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    from splitrl.bench.env import bench_env
    resolve_device(args.device)   # a clear error before any work when the platform is absent
    rows = bench_env(args.scenario, tuple(args.envs), args.steps, args.repeats, args.out, args.device)
    table = Table(title=f"split env ({args.scenario}) vs gymnax CartPole-v1, random policy, jit+vmap+scan")
    for col in ("envs", "split steps/s", "CartPole steps/s", "ratio", "peak RSS MB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["envs"]), f"{r['split_steps_per_s']:,.0f}", f"{r['cartpole_steps_per_s']:,.0f}",
                      f"{r['ratio']:.3f}", f"{r['peak_rss_mb']:,.0f}")
    Console().print(table)
    print(f"wrote {args.out}")
    return {"rows": rows}


SUBCOMMANDS = {"train": (add_train, run_train), "env": (add_env, run_env)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="splitrl-bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    args = parser.parse_args(argv)
    SUBCOMMANDS[args.command][1](args)


if __name__ == "__main__":
    main()
