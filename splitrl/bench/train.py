"""`splitrl-bench train`: *training* env steps per second (rollout + GAE + PPO epochs, the whole
update; compile timed apart, AOT) in one process:
  - HPPO on a split scenario (default: `default`), at several env counts and seed counts (vmap);
  - our flat PPO on gymnax CartPole-v1 at the same env counts;
  - rejax PPO (the fastest published JAX PPO we know; PureJaxRL-style, same hyperparameters) on
    CartPole-v1 at equal env count;
  - Stable-Baselines3 PPO on the split scenario through its Gymnasium wrapper (splitrl.env.gym), and
    on Gymnasium's own CartPole-v1 for reference.
It prints a table and writes JSON with every number and the ratios.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import yaml

from splitrl.agents import make_policy, ppo
from splitrl.agents.config import PPOConfig
from splitrl.config import ConfigError
from splitrl.resources import config_dir
from splitrl.training.sharding import place

CONF = config_dir()


def agent_config(name: str, **over) -> PPOConfig:
    path = CONF / "agent" / f"{name}.yaml"
    return PPOConfig.from_dict(yaml.safe_load(path.read_text()) | over, f"agent ({path})")


def time_compiled(fn, *args, repeats: int = 3) -> tuple[float, float]:
    """(best wall time of `repeats` calls, compile seconds) of jax.jit(fn) compiled ahead of time, so the
    compile is timed apart from the runs."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return best, compile_s


def resolve_device(name: str | None):
    """The first JAX device of platform `name` (cpu, gpu, cuda, rocm, tpu), or of the default backend;
    exits with the platforms present when there is none."""
    if not name:
        return jax.devices()[0]
    try:
        return jax.devices(name)[0]
    except RuntimeError as e:
        print(f"splitrl-bench: --device {name}: JAX has no such device here ({e}). For a GPU install a CUDA "
              "jaxlib (pip install 'jax[cuda12]' with the same jax version), or drop --device.", file=sys.stderr)
        sys.exit(2)


def train_program(cfg: PPOConfig, env, env_params, num_seeds: int, updates: int):
    """(cfg for `updates` updates, train, keys[num_seeds], HParams[num_seeds]): what one bench run trains."""
    cfg = PPOConfig(**{**cfg.__dict__, "total_timesteps": cfg.batch_size * updates})
    train = ppo.make_train(cfg, env, env_params, make_policy(cfg, env, env_params))
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    hp = ppo.HParams(lr=jnp.full(num_seeds, cfg.lr), ent_coef=jnp.full(num_seeds, cfg.ent_coef),
                     reward_v=jnp.ones(num_seeds))
    return cfg, train, keys, hp


def ours_steps_per_s(cfg: PPOConfig, env, env_params, num_seeds: int, updates: int, devices: int = 1,
                     platform: str | None = None) -> tuple[float, float]:
    """(whole-training steps/s, compile seconds) of jit(vmap(train)) over `num_seeds` seeds for `updates`
    updates; with `devices` > 1 the seeds are split over that many devices (splitrl.training.sharding, `members`)."""
    cfg, train, keys, hp = train_program(cfg, env, env_params, num_seeds, updates)
    if num_seeds == 1:   # one policy: no vmap axis (what a single-seed user runs)
        seconds, compile_s = time_compiled(train, keys[0], jax.tree.map(lambda x: x[0], hp))
    elif devices > 1:
        placement = place(devices, "members", num_seeds, cfg.num_envs, platform)
        keys, hp = placement.put(keys, placement.batch_sharding), placement.put(hp, placement.batch_sharding)
        seconds, compile_s = time_compiled(placement.map_members(train), keys, hp)
    else:
        seconds, compile_s = time_compiled(jax.vmap(train), keys, hp)
    return num_seeds * cfg.batch_size * updates / seconds, compile_s


class FiveTupleStep:
    """gymnax 1.0 (6-tuple step) seen through the older 5-tuple API that rejax 0.1.3 calls; done =
    terminated | truncated. Same work per step."""

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name):
        if name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        return obs, state, reward, terminated | truncated, info

    def reset(self, key, params=None):
        return self.env.reset(key, params)


def rejax_steps_per_s(cfg: PPOConfig, env, env_params, updates: int) -> tuple[float, float] | None:
    """(training steps/s, compile seconds) of rejax PPO with cfg's hyperparameters; None without rejax."""
    try:
        from rejax import PPO
    except ImportError:
        return None
    algo = PPO.create(env=FiveTupleStep(env), env_params=env_params, num_envs=cfg.num_envs, num_steps=cfg.num_steps,
                      num_epochs=cfg.update_epochs, num_minibatches=cfg.num_minibatches, learning_rate=cfg.lr,
                      max_grad_norm=cfg.max_grad_norm, total_timesteps=cfg.batch_size * updates, gamma=cfg.gamma,
                      gae_lambda=cfg.gae_lambda, clip_eps=cfg.clip_eps, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
                      eval_freq=cfg.batch_size * updates, skip_initial_evaluation=True,
                      agent_kwargs={"hidden_layer_sizes": cfg.hidden, "activation": "tanh"})
    algo = algo.replace(eval_callback=lambda algo, ts, rng: jnp.zeros(()))   # time training only
    seconds, compile_s = time_compiled(algo.train, jax.random.PRNGKey(0))
    return cfg.batch_size * updates / seconds, compile_s


def sb3_steps_per_s(make_gym_env, num_envs: int, n_steps: int, timesteps: int) -> float | None:
    try:
        import torch
        from stable_baselines3 import PPO as SB3PPO
        from stable_baselines3.common.vec_env import DummyVecEnv
    except ImportError:
        return None
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    vec = DummyVecEnv([make_gym_env] * num_envs)
    model = SB3PPO("MlpPolicy", vec, n_steps=n_steps, batch_size=max(1, num_envs * n_steps // 4), n_epochs=4,
                   policy_kwargs={"net_arch": [64, 64]}, device="cpu", verbose=0, seed=0)
    model.learn(total_timesteps=num_envs * n_steps)          # warm-up (jit of the wrapped step, torch init)
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps, reset_num_timesteps=False)
    return timesteps / (time.perf_counter() - start)


# ----------------------------------------------------------------------------- train subcommand
def add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="training steps/s: HPPO, flat PPO on CartPole, rejax, SB3")
    p.add_argument("--scenario", default="default", help="split scenario for HPPO and SB3 (splitrl/conf/scenario/)")
    p.add_argument("--env-counts", default="16,64,256", help="comma-separated num_envs values")
    p.add_argument("--seed-counts", default="1,4", help="comma-separated vmapped seed counts (CartPole)")
    p.add_argument("--hppo-seed-counts", default="1", help="seed counts for HPPO: XLA compiles the split env "
                   "under a member vmap axis very slowly today (docs/training.md), so 1 by default")
    p.add_argument("--updates", type=int, default=10, help="PPO updates timed per measurement")
    p.add_argument("--sb3-timesteps", type=int, default=4096, help="env steps timed for SB3")
    p.add_argument("--out", default="bench_train.json", help="JSON output path")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: hppo,cartpole,rejax,sb3")
    p.add_argument("--device", default=None, help="jax platform to measure on (cpu, gpu); default: jax's default")
    p.add_argument("--devices", type=int, default=1, help="split the vmapped seeds of our PPO over this many "
                   "devices of that platform (a divisor of every seed count > 1; docs/scaling.md)")


def run_train(args) -> dict[str, Any]:
    device = resolve_device(args.device)
    counts = [int(x) for x in f"{args.seed_counts},{args.hppo_seed_counts}".split(",") if x]
    if args.devices < 1 or any(n > 1 and n % args.devices for n in counts):
        print(f"splitrl-bench: --devices {args.devices} must be >= 1 and divide every seed count > 1 "
              f"(--seed-counts {args.seed_counts}, --hppo-seed-counts {args.hppo_seed_counts})", file=sys.stderr)
        sys.exit(2)
    with jax.default_device(device):
        try:
            return _run_train(args, device)
        except ConfigError as e:   # more --devices than the platform has
            print(f"splitrl-bench --devices {args.devices}: {e}", file=sys.stderr)
            sys.exit(2)


def _run_train(args, device) -> dict[str, Any]:
    import gymnax
    env_counts = [int(x) for x in args.env_counts.split(",")]
    seed_counts = [int(x) for x in args.seed_counts.split(",")]
    hppo_seed_counts = [int(x) for x in args.hppo_seed_counts.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    rows: list[dict[str, Any]] = []
    out: dict[str, Any] = {"host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                                    "jax": jax.__version__, "device": str(device),
                                    "devices": [str(d) for d in jax.devices(device.platform)]},
                           "updates_timed": args.updates, "devices_used": args.devices, "rows": rows}
    split = None
    if "hppo" not in skip or "sb3" not in skip:
        try:
            import splitrl.env as split_env
            split = split_env.make(args.scenario)
        except Exception as e:  # noqa: BLE001 - no env package, or a scenario that does not load
            out["split_env_unavailable"] = f"{type(e).__name__}: {e}"
    cp_env, cp_params = gymnax.make("CartPole-v1")
    hppo_cfg, cp_cfg = agent_config("hppo"), agent_config("ppo_cartpole")

    def devices_for(num_seeds: int) -> int:   # one seed is the unvmapped single-device program
        return args.devices if num_seeds > 1 else 1

    for num_envs in env_counts:
        for num_seeds in hppo_seed_counts if split and "hppo" not in skip else ():
            cfg = PPOConfig(**{**hppo_cfg.__dict__, "num_envs": num_envs})
            rate, compile_s = ours_steps_per_s(cfg, *split, num_seeds, args.updates, devices_for(num_seeds),
                                               device.platform)
            rows.append({"what": f"HPPO ({args.scenario})", "num_envs": num_envs, "num_seeds": num_seeds,
                         "devices": devices_for(num_seeds), "steps_per_s": rate, "compile_s": compile_s})
        for num_seeds in seed_counts:
            if "cartpole" not in skip:
                cfg = PPOConfig(**{**cp_cfg.__dict__, "num_envs": num_envs})
                rate, compile_s = ours_steps_per_s(cfg, cp_env, cp_params, num_seeds, args.updates,
                                                   devices_for(num_seeds), device.platform)
                rows.append({"what": "flat PPO (CartPole-v1)", "num_envs": num_envs, "num_seeds": num_seeds,
                             "devices": devices_for(num_seeds), "steps_per_s": rate, "compile_s": compile_s})
        if "rejax" not in skip:
            cfg = PPOConfig(**{**cp_cfg.__dict__, "num_envs": num_envs})
            timed = rejax_steps_per_s(cfg, cp_env, cp_params, args.updates)
            if timed is not None:
                rows.append({"what": "rejax PPO (CartPole-v1)", "num_envs": num_envs, "num_seeds": 1,
                             "steps_per_s": timed[0], "compile_s": timed[1]})
    if "sb3" not in skip:
        sb3_rows(args, split, hppo_cfg, rows)
    out["ratios"] = ratios(rows, args.scenario)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print_table(out, args.out)
    return out


def sb3_rows(args, split, hppo_cfg: PPOConfig, rows: list) -> None:
    import gymnasium
    if split:
        from splitrl.env.gym import SplitGymEnv
        rate = sb3_steps_per_s(lambda: SplitGymEnv(*split), 8, hppo_cfg.num_steps, args.sb3_timesteps)
        if rate is not None:
            rows.append({"what": f"SB3 PPO ({args.scenario}, Gymnasium wrapper)", "num_envs": 8, "num_seeds": 1,
                         "steps_per_s": rate})
    rate = sb3_steps_per_s(lambda: gymnasium.make("CartPole-v1"), 4, 128, args.sb3_timesteps)
    if rate is not None:
        rows.append({"what": "SB3 PPO (Gymnasium CartPole-v1)", "num_envs": 4, "num_seeds": 1, "steps_per_s": rate})


def ratios(rows, scenario: str) -> dict[str, float]:
    def best(what, **where):
        rates = [r["steps_per_s"] for r in rows if r["what"].startswith(what)
                 and all(r[k] == v for k, v in where.items())]
        return max(rates) if rates else None

    out = {}
    hppo, sb3 = best("HPPO"), best("SB3 PPO (" + scenario)
    if hppo and sb3:
        out["hppo_best_over_sb3_split"] = hppo / sb3
    for n in sorted({r["num_envs"] for r in rows}):
        ours, rejax = best("flat PPO (CartPole", num_envs=n, num_seeds=1), best("rejax", num_envs=n)
        if ours and rejax:
            out[f"ours_over_rejax_cartpole_envs{n}"] = ours / rejax
    return out


def print_table(out: dict[str, Any], path: str) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title=f"training steps/s ({out['host']['cpus']} CPUs, {out['host']['device']}, "
                        f"{out['updates_timed']} updates timed, compile excluded)")
    for col in ("what", "envs", "seeds", "devices", "steps/s", "compile s"):
        table.add_column(col, justify="left" if col == "what" else "right")
    for r in out["rows"]:
        table.add_row(r["what"], str(r["num_envs"]), str(r["num_seeds"]), str(r.get("devices", 1)),
                      f"{r['steps_per_s']:,.0f}", f"{r['compile_s']:.1f}" if "compile_s" in r else "")
    console = Console()
    console.print(table)
    for k, v in out["ratios"].items():
        console.print(f"{k}: {v:,.2f}")
    if "split_env_unavailable" in out:
        console.print(f"split env unavailable: {out['split_env_unavailable']}")
    console.print(f"wrote {path}")
