"""`splitrl-bench all --profile cpu|gpu`: every measurement of issue 16 in one process, so the ratios
compare programs run on the same machine under the same load:
  - env: random-policy rollouts of the split env beside gymnax CartPole-v1 (splitrl.bench.env);
  - train: HPPO on the scenario beside rejax PPO on CartPole at equal envs (and, on the cpu profile,
    our flat PPO on CartPole) (splitrl.bench.train);
  - compile: HPPO's trace+lower and XLA compile seconds for 1 seed and for N vmapped seeds, apart from
    the first run.
Peak memory is the peak so far in the process (host RSS; device peak bytes where the backend reports
them), recorded after each measurement. The JSON is rewritten after every measurement, with the part
in progress under "running", so a run that is killed keeps what it finished.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import shlex
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax


@dataclass(frozen=True)
class Profile:
    env: tuple[tuple[int, int], ...]   # (envs, steps per rollout): short rollouts at large batch bound the run time
    train_envs: tuple[int, ...]
    updates: int                       # PPO updates per timed call
    flat: bool                         # also time our flat PPO on CartPole (ours vs rejax, learner only)
    compile_seeds: tuple[int, ...]
    repeats: int = 3


# cpu: <= 10 min on 2 cores; gpu: < 5 min on one H200 (compiles dominate, runs are milliseconds)
PROFILES = {
    "cpu": Profile(env=((256, 200), (4096, 200), (65536, 50)), train_envs=(256,), updates=10, flat=True,
                   compile_seeds=(1, 8)),
    "gpu": Profile(env=((4096, 200), (65536, 100), (262144, 100), (1048576, 50)), train_envs=(4096,), updates=10,
                   flat=False, compile_seeds=(1, 8)),
}
PARTS = ("env", "train", "compile")


def add_all(subparsers) -> None:
    p = subparsers.add_parser(
        "all", help="env, training and compile benchmarks in one process with a profile; one JSON",
        description="Runs, in one process: the split env beside gymnax CartPole (cpu profile: 256, 4096, 65536 "
                    "envs; gpu: 4096 to 1,048,576 envs), HPPO training beside rejax PPO on CartPole at equal envs "
                    "(cpu: 256 envs; gpu: 4096), and HPPO compile seconds for 1 and 8 vmapped seeds. Prints "
                    "ratios, peak memory and compile seconds apart from run times; writes one JSON with every "
                    "number and the machine. The cpu profile takes a few minutes on 2 cores, the gpu profile "
                    "is sized for under 5 minutes on one H200. The other flags override a profile's sizes.")
    p.add_argument("--profile", choices=sorted(PROFILES), required=True)
    p.add_argument("--device", default=None, help="jax platform (cpu, gpu); default: the profile's")
    p.add_argument("--scenario", default="default")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--envs", type=int, nargs="+", default=None, help="env counts of the env part")
    p.add_argument("--steps", type=int, default=None, help="steps per env rollout (default: the profile's per count)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement, best taken (default 3)")
    p.add_argument("--train-envs", type=int, nargs="+", default=None, help="num_envs of the train part")
    p.add_argument("--updates", type=int, default=None, help="PPO updates per timed training call")
    p.add_argument("--compile-seeds", type=int, nargs="+", default=None, help="HPPO seed counts of the compile part")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench_all_<profile>.json)")


def machine(dev, argv: list[str]) -> dict[str, Any]:
    return {"platform": dev.platform, "device_kind": dev.device_kind, "device": str(dev),
            "device_count": len(jax.devices(dev.platform)), "jax": jax.__version__,
            "jaxlib": _version("jaxlib"), "python": platform.python_version(),
            "host": platform.node(), "os": platform.platform(), "cpus": os.cpu_count(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": shlex.join(["splitrl-bench", *argv]), "process_argv": sys.argv}


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def memory(dev) -> dict[str, float]:
    """Peak host RSS so far and, where the backend reports it (GPU, TPU; not CPU), the device's peak bytes."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory stats
        stats = {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def env_part(args, prof: Profile, dev, record) -> None:
    from splitrl.bench.env import against_cartpole, make_rollout, random_split_action
    from splitrl.env import make
    env, params = make(args.scenario)
    policy = lambda k, o: random_split_action(env, k, o)  # noqa: E731
    steps_of = dict(prof.env)
    for n in args.envs or [n for n, _ in prof.env]:
        steps = args.steps or steps_of.get(n, min(steps_of.values()))
        r = against_cartpole(make_rollout(env, params, n, steps, policy), n * steps, n, steps, prof.repeats)
        r.pop("peak_rss_mb")
        record({"envs": n, "steps": steps, "split_steps_per_s": r.pop("steps_per_s"), **r, **memory(dev)})


def train_part(args, prof: Profile, dev, record) -> None:
    import gymnax

    import splitrl.env as split_env
    from splitrl.agents.config import PPOConfig
    from splitrl.bench.train import agent_config, ours_steps_per_s, rejax_steps_per_s
    split = split_env.make(args.scenario)
    cp = gymnax.make("CartPole-v1")
    hppo, cartpole = agent_config("hppo"), agent_config("ppo_cartpole")
    updates = args.updates or prof.updates

    def row(what: str, n: int, timed: tuple[float, float]) -> dict:
        return {"what": what, "num_envs": n, "updates": updates, "steps_per_s": timed[0], "compile_s": timed[1],
                **memory(dev)}

    for n in args.train_envs or prof.train_envs:
        hppo_n, cartpole_n = (PPOConfig(**{**c.__dict__, "num_envs": n}) for c in (hppo, cartpole))
        record(row(f"HPPO ({args.scenario})", n, ours_steps_per_s(hppo_n, *split, 1, updates)))
        if prof.flat:
            record(row("flat PPO (CartPole-v1)", n, ours_steps_per_s(cartpole_n, *cp, 1, updates)))
        timed = rejax_steps_per_s(cartpole_n, *cp, updates)
        if timed is None:
            raise RuntimeError("rejax is not installed (pip install rejax==0.1.3, the bench extra)")
        record(row("rejax PPO (CartPole-v1)", n, timed))


def compile_part(args, prof: Profile, dev, record) -> None:
    import splitrl.env as split_env
    from splitrl.bench.train import agent_config, train_program
    env, params = split_env.make(args.scenario)
    for seeds in args.compile_seeds or prof.compile_seeds:
        # the agent's own num_envs: the program a user compiles; 2 updates keep the first run short
        cfg, train, keys, hp = train_program(agent_config("hppo"), env, params, seeds, 2)
        fn, call = (train, (keys[0], jax.tree.map(lambda x: x[0], hp))) if seeds == 1 else (jax.vmap(train), (keys, hp))
        t0 = time.perf_counter()
        lowered = jax.jit(fn).lower(*call)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        jax.block_until_ready(compiled(*call))
        t3 = time.perf_counter()
        record({"num_seeds": seeds, "num_envs": cfg.num_envs, "lower_s": t1 - t0, "compile_s": t2 - t1,
                "first_run_s": t3 - t2, **memory(dev)})


def run_all(args) -> dict[str, Any]:
    from splitrl.bench.train import resolve_device
    prof = PROFILES[args.profile]
    if args.repeats:
        prof = Profile(**{**prof.__dict__, "repeats": args.repeats})
    parts = [p for p in args.parts.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        raise SystemExit(f"splitrl-bench all: --parts {sorted(unknown)}: must be among {','.join(PARTS)}")
    dev = resolve_device(args.device or args.profile)
    out_path = args.out or Path(f"bench_all_{args.profile}.json")
    result: dict[str, Any] = {"profile": args.profile, "scenario": args.scenario, "repeats": prof.repeats,
                              "machine": machine(dev, getattr(args, "argv", [])), "done": [], "running": None, "errors": {}}

    def save() -> None:   # atomic, so a killed run leaves the last complete JSON, ratios included
        result["ratios"] = ratios(result)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out_path)

    start = time.perf_counter()
    with jax.default_device(dev):
        for part in parts:
            rows = result.setdefault(part, [])
            result["running"] = part
            save()

            def record(row: dict, part=part, rows=rows) -> None:
                rows.append(row)
                save()
                print(f"[{time.perf_counter() - start:6.1f} s] {part}: " + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)

            try:
                {"env": env_part, "train": train_part, "compile": compile_part}[part](args, prof, dev, record)
                result["done"].append(part)
            except Exception as e:  # noqa: BLE001 - one failing part must not lose the others
                traceback.print_exc()
                result["errors"][part] = f"{type(e).__name__}: {e}"
    result["running"] = None
    result["wall_s"] = time.perf_counter() - start
    result["memory"] = memory(dev)
    save()
    print_summary(result, out_path)
    return result


def ratios(result: dict) -> dict[str, float]:
    out = {f"split_over_cartpole_envs{r['envs']}": r["ratio"] for r in result.get("env", [])}
    train = result.get("train", [])
    for n in sorted({r["num_envs"] for r in train}):
        rate = {r["what"].split(" (")[0]: r["steps_per_s"] for r in train if r["num_envs"] == n}
        if "rejax PPO" in rate:
            for ours in ("HPPO", "flat PPO"):
                if ours in rate:
                    out[f"{ours.replace(' ', '_').lower()}_over_rejax_envs{n}"] = rate[ours] / rate["rejax PPO"]
    return out


def print_summary(result: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(width=None if sys.stdout.isatty() else 160)   # a pipe's 80 columns cut the numbers
    m = result["machine"]
    console.print(f"splitrl-bench all --profile {result['profile']}: {m['device_kind']} ({m['platform']}), "
                  f"jax {m['jax']}, {m['cpus']} CPUs, {m['date']}, best of {result['repeats']}")
    tables = {
        "env": ("split env vs gymnax CartPole-v1, random policy", {
            "envs": "{:,d}", "steps": "{:d}", "split_steps_per_s": "{:,.0f}", "cartpole_steps_per_s": "{:,.0f}",
            "ratio": "{:.3f}", "compile_s": "{:.1f}", "cartpole_compile_s": "{:.1f}"}),
        "train": ("training steps/s (whole PPO updates)", {
            "what": "{}", "num_envs": "{:,d}", "updates": "{:d}", "steps_per_s": "{:,.0f}", "compile_s": "{:.1f}"}),
        "compile": ("HPPO compile (AOT), apart from the first run", {
            "num_seeds": "{:d}", "num_envs": "{:d}", "lower_s": "{:.1f}", "compile_s": "{:.1f}",
            "first_run_s": "{:.1f}"}),
    }
    for part, (title, cols) in tables.items():
        if not result.get(part):
            continue
        cols = cols | {"peak_rss_mb": "{:,.0f}"} | ({"device_peak_mb": "{:,.0f}"}
                                                  if "device_peak_mb" in result[part][0] else {})
        table = Table(title=title)
        for col in cols:
            table.add_column(col.replace("_per_s", "/s").replace("_", " "), justify="right")
        for r in result[part]:
            table.add_row(*(fmt.format(r[col]) for col, fmt in cols.items()))
        console.print(table)
    for k, v in result["ratios"].items():
        console.print(f"{k}: {v:.3f}")
    for part, err in result["errors"].items():
        console.print(f"[red]{part} failed: {err}[/red]")
    console.print(f"peak host RSS {result['memory']['peak_rss_mb']:,.0f} MB; whole run {result['wall_s']:.0f} s; "
                  f"wrote {path}")
