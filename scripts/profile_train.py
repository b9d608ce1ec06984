"""Where an HPPO update's time goes (docs/training.md, "Where HPPO's update time goes"), two ways:

  python scripts/profile_train.py ablate [--envs 256] [--variants base,noguide,epochs1,noguide_epochs1,rejax]
      whole-training steps/s (splitrl.bench.train.ours_steps_per_s: 10 updates, compile apart, best of 3)
      of the default HPPO agent and of variants that drop one part, and rejax PPO on CartPole, in one process;
  python scripts/profile_train.py ops [--envs 256] [--updates 2] [--top 40]
      one run of the compiled training under the JAX profiler: the CPU time of every executed HLO op,
      summed by the jax source op it came from (its op_name metadata) and by fusion kind.

The differences between the ablations give each part's cost per env step; the op profile says which ops
inside a part cost most. Run one at a time on a shared machine: both are CPU-heavy.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile

import jax

import splitrl.env as split_env
from splitrl.agents.config import PPOConfig
from splitrl.bench import train as bench

VARIANTS = {"base": {}, "noguide": {"guide": "none"}, "epochs1": {"update_epochs": 1},
            "noguide_epochs1": {"guide": "none", "update_epochs": 1}}


def ablate(args) -> None:
    import gymnax
    env, env_params = split_env.make(args.scenario)
    base = bench.agent_config("hppo", num_envs=args.envs)
    for name in args.variants.split(","):
        if name == "rejax":
            cartpole, cartpole_params = gymnax.make("CartPole-v1")
            rate, compile_s = bench.rejax_steps_per_s(bench.agent_config("ppo_cartpole", num_envs=args.envs),
                                                      cartpole, cartpole_params, args.updates)
        else:
            cfg = PPOConfig(**{**base.__dict__, **VARIANTS[name]})
            rate, compile_s = bench.ours_steps_per_s(cfg, env, env_params, 1, args.updates)
        print(f"{name:16s} {rate:10,.0f} steps/s  {1e6 / rate:6.2f} us/step  compile {compile_s:5.1f} s", flush=True)


def source_of_ops(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the jax op it was lowered from, without the jit/scan nesting."""
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo_text, re.M):
        parts = [p for p in m.group(2).split("/") if p not in ("jit(train)", "while", "body", "closed_call")]
        out[m.group(1)] = "/".join(parts)
    return out


def ops(args) -> None:
    from jax.profiler import ProfileData
    env, env_params = split_env.make(args.scenario)
    cfg, train, keys, hp = bench.train_program(bench.agent_config("hppo", num_envs=args.envs), env, env_params,
                                               1, args.updates)
    call = (keys[0], jax.tree.map(lambda x: x[0], hp))
    compiled = jax.jit(train).lower(*call).compile()
    source = source_of_ops(compiled.as_text())
    jax.block_until_ready(compiled(*call))
    trace_dir = tempfile.mkdtemp(prefix="splitrl-profile-")
    jax.profiler.start_trace(trace_dir)
    jax.block_until_ready(compiled(*call))
    jax.profiler.stop_trace()
    profile = ProfileData.from_file(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[-1])
    by_source, by_kind, total = collections.Counter(), collections.Counter(), 0
    for plane in profile.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):   # XLA:CPU's worker threads run the ops
                continue
            for event in line.events:
                if event.name.startswith(("while", "ThunkExecutor", "end:", "conditional", "call")):
                    continue   # containers: their ops are counted one by one
                total += event.duration_ns
                by_source[source.get(event.name, "(no source: copies, layout)")] += event.duration_ns
                by_kind[re.sub(r"[.\d]+$", "", event.name)] += event.duration_ns
    print(f"op time {total / 1e6:.1f} ms over {args.updates} updates of {cfg.batch_size} steps (both threads)")
    for title, counter in (("by fusion kind", by_kind), ("by jax source op", by_source)):
        print(f"\n{title}")
        for name, ns in counter.most_common(args.top):
            print(f"{ns / 1e6:8.2f} ms {100 * ns / total:5.1f} %  {name[-150:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("ablate", "ops"))
    p.add_argument("--scenario", default="default")
    p.add_argument("--envs", type=int, default=256)
    p.add_argument("--updates", type=int, default=None, help="updates per timed run (ablate 10, ops 2)")
    p.add_argument("--variants", default="base,noguide,epochs1,noguide_epochs1,rejax")
    p.add_argument("--top", type=int, default=40)
    args = p.parse_args()
    args.updates = args.updates or (10 if args.what == "ablate" else 2)
    ablate(args) if args.what == "ablate" else ops(args)


if __name__ == "__main__":
    main()
