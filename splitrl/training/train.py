"""`splitrl-train`: the Hydra entry point and the host loop.

Four parts, top to bottom: build (typed config once, env, policy, the member batch of seeds ×
vmapped hyperparameters), the host loop (jitted chunks of `updates_per_chunk` PPO updates; between
chunks: log, progress, checkpoint), finish (evaluation, final parameters, summary), and a thin
`@hydra.main`.

Each run writes to its Hydra run dir: `.hydra/` and `resolved_config.yaml`, `metrics.jsonl`,
`checkpoints/<update>/` (orbax), `final_params/` (orbax) and `final_params.msgpack`, `summary.json`,
and with W&B on, `wandb_root/wandb/offline-run-*` (one run per member, grouped).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from splitrl.agents import make_policy, ppo
from splitrl.agents.config import PPOConfig
from splitrl.agents.pretrain import make_pretrain
from splitrl.config import ConfigError, build
from splitrl.resources import config_dir
from splitrl.training.checkpoint import Checkpointer, CheckpointError
from splitrl.training.config import LoggerConfig, TrainConfig
from splitrl.training.logger import RunLogger
from splitrl.training.rundir import write_final_params
from splitrl.training.sharding import Placement, place

CONF_DIR = str(config_dir())
TRAIN_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]
# config fields that may change between an interrupted run and its resume
# (devices and shard too: a run may resume on another device count; the result is the same)
NOT_IDENTITY = ("logger", "resume", "progress", "stop_after", "eval_episodes_envs", "keep_checkpoints",
                "checkpoint_every", "devices", "shard")


# ----------------------------------------------------------------------------- build
@dataclasses.dataclass(frozen=True)
class Setup:
    agent: PPOConfig
    train: TrainConfig
    logger: LoggerConfig
    stop_after: int
    run_dir: Path
    run_name: str
    identity: dict


def typed_config(cfg: DictConfig, run_dir: Path) -> Setup:
    """The Hydra tree, converted once into frozen dataclasses (nothing below sees a DictConfig)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    train = {k: data.get(k) for k in TRAIN_KEYS if k in data}
    for key in ("lr_grid", "ent_coef_grid", "reward_v_grid"):
        train[key] = tuple(train.get(key) or ())
    known = set(TRAIN_KEYS) | {"agent", "logger", "scenario", "scenario_file", "fleet", "stop_after", "run_name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config: unknown top-level key(s) {unknown}; known: {sorted(known)}")
    identity = {k: v for k, v in data.items() if k not in NOT_IDENTITY}
    run_name = data.get("run_name") or f"{data['agent']['name']}-seed{data.get('seed')}"
    return Setup(agent=PPOConfig.from_dict(data["agent"], "agent"), train=build(TrainConfig, train, ""),
                 logger=build(LoggerConfig, data["logger"], "logger"), stop_after=int(data.get("stop_after", 0)),
                 run_dir=run_dir, run_name=run_name, identity=identity)


def with_scenario_file(cfg: DictConfig) -> DictConfig:
    """`cfg` with its scenario read from `scenario_file` when that is set, so the resolved config, the
    run's identity and every reader of the run dir see the scenario that was trained on."""
    if not cfg.get("scenario_file"):
        return cfg
    from splitrl.env.scenario import ScenarioError, load_scenario_dict
    try:
        data, _ = load_scenario_dict(Path(cfg.scenario_file))
    except ScenarioError as e:
        raise ConfigError(f"config scenario_file: {e}") from e
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.scenario = OmegaConf.create(data)
    return cfg


def with_fleet(cfg: DictConfig) -> DictConfig:
    """With a fleet (`fleet=NAME`: splitrl/conf/fleet/NAME.yaml), `cfg` without the scenario group's
    default: the devices' scenarios are the fleet file's, so the resolved config names only the fleet."""
    if not cfg.get("fleet") or "scenario" not in cfg:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg["scenario"]
    return cfg


def make_fleet_env(agent: PPOConfig, fleet: dict):
    """(FleetEnv, FleetParams) for `fleet=...`: one hierarchical policy shared by every device."""
    if agent.env != "split" or agent.policy != "hierarchical":
        raise ConfigError(f"config fleet: a fleet trains the hierarchical policy on the split env (agent=hppo); "
                          f"got agent.env = {agent.env!r}, agent.policy = {agent.policy!r}")
    from splitrl.env.fleet_scenario import ScenarioError, make_fleet
    try:
        return make_fleet(fleet)
    except ScenarioError as e:
        raise ConfigError(f"config fleet: {e}") from e


def make_env(agent: PPOConfig, scenario: Any, fleet: dict | None = None):
    """(env, env_params) for `agent.env`: gymnax ids through gymnax.make, split scenarios through
    splitrl.env (imported lazily), a fleet through splitrl.env.fleet_scenario."""
    if fleet is not None:
        return make_fleet_env(agent, fleet)
    if agent.env == "gymnax":
        import gymnax
        try:
            return gymnax.make(agent.gymnax_id)
        except ValueError as e:
            raise ConfigError(f"config agent.gymnax_id = {agent.gymnax_id!r}: {e}") from e
    try:
        import splitrl.env as split_env
    except ImportError as e:
        raise ConfigError(f"config agent.env = {agent.env!r} needs splitrl.env, which is not importable "
                          f"({e}); train a gymnax env instead: agent=ppo_cartpole") from e
    if scenario is None:
        from splitrl.env.scenario import SCENARIO_DIR
        known = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
        raise ConfigError(f"config scenario is missing: agent.env = {agent.env} needs one; scenario=NAME picks "
                          f"{SCENARIO_DIR}/NAME.yaml (known: {known}) or a --config-dir's scenario/NAME.yaml, and "
                          "scenario=path/to/file.yaml (or scenario_file=...) a file of your own")
    try:
        env, env_params = split_env.make(scenario)
    except split_env.ScenarioError as e:
        raise ConfigError(f"config scenario: {e}") from e
    if agent.env == "split_flat":
        from splitrl.env.flat import FlatSplitEnv
        return FlatSplitEnv(env, env_params), env_params
    return env, env_params


def member_grid(train: TrainConfig, agent: PPOConfig, default_v: float) -> list[dict[str, Any]]:
    """The policies trained together: seeds × learning rates × entropy coefficients × V values."""
    seeds = range(train.seed, train.seed + train.num_seeds)
    grid = itertools.product(seeds, train.lr_grid or (agent.lr,), train.ent_coef_grid or (agent.ent_coef,),
                             train.reward_v_grid or (default_v,))
    return [{"seed": s, "lr": float(lr), "ent_coef": float(e), "reward_v": float(v)} for s, lr, e, v in grid]


def batch_inputs(members):
    keys = jnp.stack([jax.random.PRNGKey(m["seed"]) for m in members])
    hps = ppo.HParams(lr=jnp.array([m["lr"] for m in members], jnp.float32),
                      ent_coef=jnp.array([m["ent_coef"] for m in members], jnp.float32),
                      reward_v=jnp.array([m["reward_v"] for m in members], jnp.float32))
    return keys, hps


# ----------------------------------------------------------------------------- host loop
GUIDE_FIT = ("guide_nll", "guide_agree")   # measured only while the guide's weight is positive (0 after)


def chunk_rows(metrics: dict[str, np.ndarray], steps_per_s: float) -> list[dict[str, float]]:
    """Chunk means per member ([B, K] arrays in), namespaced train/ and env/. The guide's fit (`GUIDE_FIT`)
    is the mean over the chunk's updates with the guide on, and left out of a chunk without any."""
    rows = []
    for i in range(next(iter(metrics.values())).shape[0]):
        episodes = metrics["episodes"][i].sum()
        row = {"train/episode_return": float(metrics["episode_return_sum"][i].sum() / episodes) if episodes
               else float("nan"), "train/episodes": float(episodes), "train/steps_per_s": steps_per_s}
        guided = metrics["guide_beta"][i] > 0 if "guide_beta" in metrics else None
        for k, v in metrics.items():
            if k in GUIDE_FIT:
                if guided.any():
                    row[f"train/{k}"] = float(v[i][guided].mean())
            elif k not in ("episodes", "episode_return_sum"):
                row[k if k.startswith("env/") else f"train/{k}"] = float(v[i].mean())
        rows.append(row)
    return rows


def make_progress(enabled: bool, total: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("env steps"),
                        TextColumn("{task.fields[rate]}"), TextColumn("return {task.fields[ret]}"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled)
    return progress, progress.add_task("train", total=total, rate="-", ret="-")


@dataclasses.dataclass(frozen=True)
class Job:
    """What the host loop drives: the env, the member batch and its placement, the compiled pieces' inputs."""
    env: Any
    env_params: Any
    members: list[dict[str, Any]]
    placement: Placement
    policy: Any
    update: Any             # ppo.make_update's pure update
    keys: Any               # [B] PRNG keys, one per member
    hps: ppo.HParams        # [B] traced hyperparameters


def build_job(setup: Setup, cfg: DictConfig) -> Job:
    agent, train = setup.agent, setup.train
    env, env_params = make_env(agent, OmegaConf.to_container(cfg.scenario, resolve=True) if "scenario" in cfg else None,
                               OmegaConf.to_container(cfg.fleet, resolve=True) if cfg.get("fleet") else None)
    try:
        # a fleet's V is per device ([N], equal on every device: checked when the fleet is built)
        default_v = (float(np.asarray(ppo.get_field(env_params, train.reward_v_field)).reshape(-1)[0])
                     if train.reward_v_field else 1.0)
    except AttributeError as e:
        raise ConfigError(f"config reward_v_field = {train.reward_v_field!r}: not a field of "
                          f"{type(env_params).__name__} ({e}); the split env's V is reward.V, a fleet's "
                          "device.reward.V") from e
    members = member_grid(train, agent, default_v)
    placement = place(train.devices, train.shard, len(members), agent.num_envs)
    if placement.num_devices > 1 and setup.logger.console:
        info = placement.describe()
        print(f"training {len(members)} policies on {info['devices']} {info['platform']} devices, "
              f"split by {info['shard']}", flush=True)
    policy = make_policy(agent, env, env_params)
    v_field = train.reward_v_field if train.reward_v_grid else None
    keys, hps = batch_inputs(members)
    return Job(env=env, env_params=env_params, members=members, placement=placement, policy=policy,
               update=ppo.make_update(agent, env, env_params, policy, v_field),
               keys=placement.put(keys, placement.batch_sharding), hps=placement.put(hps, placement.batch_sharding))


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    cfg = with_fleet(with_scenario_file(cfg))
    setup = typed_config(cfg, run_dir)
    logging.getLogger("absl").setLevel(logging.WARNING)   # orbax logs every file it writes at INFO
    agent, train = setup.agent, setup.train
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    job = build_job(setup, cfg)
    v_field = train.reward_v_field if train.reward_v_grid else None
    init = ppo.make_init(agent, job.env, job.env_params, job.policy, v_field)
    state = make_initial_state(job.placement, init, job.keys, job.hps)
    ckpt = Checkpointer(run_dir / "checkpoints", train.keep_checkpoints) if train.checkpoint_every or train.resume else None
    done_updates = 0
    if train.resume and ckpt.latest() is not None:   # nothing saved yet: a fresh start (died before its first save)
        state, done_updates = ckpt.restore(state, setup.identity)
        state = job.placement.put(state, job.placement.state_sharding)
    logger = RunLogger(run_dir, setup.logger, setup.run_name, job.members, setup.identity, resume=train.resume)
    evaluate = make_evaluator(job.placement, job.policy, job.env, job.env_params, train.eval_episodes_envs,
                              eval_steps(job.env_params))
    random_eval = jax.device_get(evaluate["uniform"](state.params, job.keys)) if evaluate else None
    pretrain_rows = None
    if done_updates == 0 and agent.pretrain_rounds:   # a resumed run has its pretrained weights already
        state, pretrain_rows = run_pretrain(setup, job, state, v_field)
    state, curve, done_updates = train_loop(setup, job, state, done_updates, logger, ckpt)
    summary = finish(setup, state, job.members, job.keys, evaluate, random_eval, curve, done_updates,
                     agent.num_updates, logger, job.placement, pretrain_rows)
    if ckpt:
        ckpt.close()
    logger.close()
    return summary


def run_pretrain(setup: Setup, job: Job, state, v_field):
    """The guide's DAgger rounds before the first update (splitrl/agents/pretrain.py), one jit over the
    member batch. Returns (state, per member the rounds' last-step metrics: guide NLL and agreement,
    value loss, the round's mean reward)."""
    placement = job.placement
    fn = placement.map_members(make_pretrain(setup.agent, job.env, job.env_params, job.policy, v_field),
                               in_shardings=(placement.state_sharding(state), placement.batch_sharding(job.hps)),
                               out_shardings=(placement.state_sharding(state), placement.batch_sharding(job.hps).lr))
    start = time.perf_counter()
    state, metrics = fn(state, job.hps)
    metrics = jax.device_get(metrics)
    rows = [[{k: float(v[m, r]) for k, v in metrics.items()} for r in range(setup.agent.pretrain_rounds)]
            for m in range(len(job.members))]
    if setup.logger.console:
        for r, row in enumerate(rows[0]):
            print(f"pretrain round {r + 1}/{setup.agent.pretrain_rounds}  guide agreement {row['guide_agree']:.4f}  "
                  f"NLL {row['guide_nll']:.4f}  value loss {row['value_loss']:.4g}  reward {row['reward_mean']:.4g}",
                  flush=True)
        print(f"pretraining took {time.perf_counter() - start:.0f} s (compile included)", flush=True)
    return state, rows


def train_loop(setup: Setup, job: Job, state, done_updates: int, logger: RunLogger, ckpt):
    """Jitted chunks of `updates_per_chunk` updates until the end (or `stop_after`); between chunks the
    host logs, updates the progress bar and checkpoints. Returns (state, learning curve, updates done)."""
    agent, train, placement = setup.agent, setup.train, job.placement
    total = agent.num_updates
    last = min(total, done_updates + setup.stop_after) if setup.stop_after else total
    curve, compiled = [], {}
    progress, task = make_progress(train.progress, total * agent.batch_size)
    with progress:
        progress.update(task, completed=done_updates * agent.batch_size)
        while done_updates < last:
            n = min(train.updates_per_chunk, total - done_updates)
            if n not in compiled:   # compile ahead of time so the timing below is pure training
                chunk = placement.map_members(partial(ppo.run_updates, job.update, n),
                                              in_shardings=(placement.state_sharding(state),
                                                            placement.batch_sharding(job.hps)),
                                              out_shardings=(placement.state_sharding(state),
                                                             placement.batch_sharding(job.hps).lr))
                compiled[n] = chunk.lower(state, job.hps).compile()
            start = time.perf_counter()
            state, metrics = compiled[n](state, job.hps)
            metrics = jax.device_get(metrics)
            rate = len(job.members) * n * agent.batch_size / (time.perf_counter() - start)
            done_updates += n
            curve.append(log_chunk(setup, logger, chunk_rows(metrics, rate), done_updates, rate))
            progress.update(task, completed=done_updates * agent.batch_size, rate=f"{rate:,.0f}/s",
                            ret=f"{curve[-1]['episode_return']:.3g}")
            if ckpt and train.checkpoint_every and done_updates % train.checkpoint_every == 0:
                ckpt.save(done_updates, state, setup.identity)
    return state, curve, done_updates


def log_chunk(setup: Setup, logger: RunLogger, rows: list[dict], done_updates: int, rate: float) -> dict:
    """Log one chunk's rows; returns its point of the learning curve."""
    steps = done_updates * setup.agent.batch_size
    logger.log(done_updates, [r | {"train/env_steps": steps} for r in rows])
    returns = np.array([r["train/episode_return"] for r in rows])   # NaN: no episode ended in the chunk
    mean_return = float(returns[~np.isnan(returns)].mean()) if (~np.isnan(returns)).any() else float("nan")
    if setup.logger.console and not setup.train.progress:
        print(f"update {done_updates}/{setup.agent.num_updates}  return {mean_return:.4g}  {rate:,.0f} steps/s",
              flush=True)
    return {"update": done_updates, "env_steps": steps, "episode_return": mean_return, "steps_per_s": rate}


def make_initial_state(placement: Placement, init, keys, hps):
    """The member batch's LearnerState, created where the placement keeps it."""
    out = placement.state_sharding(jax.eval_shape(jax.vmap(init), keys, hps))
    return placement.map_members(init, in_shardings=(placement.batch_sharding(keys), placement.batch_sharding(hps)),
                                 out_shardings=out)(keys, hps)


def make_evaluator(placement: Placement, policy, env, env_params, num_envs: int, num_steps: int):
    """{mode: jitted evaluate_returns(params[B], keys[B]) over the member batch} for greedy and uniform
    (the random baseline); {} when num_envs = 0 (no evaluation: each mode is one more compile)."""
    if num_envs == 0:
        return {}
    return {mode: placement.map_members(partial(ppo.evaluate_returns, policy, env, env_params, num_envs=num_envs,
                                                num_steps=num_steps, mode=mode))
            for mode in ("greedy", "uniform")}


def eval_steps(env_params) -> int:
    """Enough steps for every eval env to finish at least one episode."""
    return int(getattr(env_params, "max_steps_in_episode", 500)) + 1


# ----------------------------------------------------------------------------- finish
def finish(setup: Setup, state, members, keys, evaluate, random_eval, curve, done_updates, total, logger,
           placement: Placement, pretrain_rows=None):
    run_dir = setup.run_dir
    summary: dict[str, Any] = {"run_name": setup.run_name, "updates": done_updates, "total_updates": total,
                               "members": members, "devices": placement.describe(), "curve": curve}
    if pretrain_rows is not None:
        summary["pretrain"] = pretrain_rows
    if random_eval is not None:
        summary["random_policy_return"] = random_eval["episode_return"].tolist()
        summary["random_env_metrics"] = {k: v.tolist() for k, v in random_eval.items() if k != "episodes"}
    if done_updates < total:
        summary["stopped_early"] = True
    else:
        write_final_params(run_dir, state.params)
        if evaluate:
            greedy = jax.device_get(evaluate["greedy"](state.params, keys))
            summary |= {"greedy_return": greedy["episode_return"].tolist(),
                        "greedy_env_metrics": {k: v.tolist() for k, v in greedy.items() if k != "episodes"}}
            logger.summary([{"eval/greedy_return": g, "eval/random_policy_return": r}
                            for g, r in zip(summary["greedy_return"], summary["random_policy_return"], strict=True)])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """The learning-curve summary: about ten points of the curve, then the baseline and the evaluation."""
    from rich.console import Console
    from rich.table import Table
    curve = summary["curve"]
    table = Table(title=f"learning curve: {summary['run_name']} (mean over {len(summary['members'])} policies)")
    for col in ("update", "env steps", "episode return", "steps/s"):
        table.add_column(col, justify="right")
    stride = max(1, len(curve) // 10)
    shown = curve[::stride] + ([curve[-1]] if curve and (len(curve) - 1) % stride else [])
    for point in shown:
        table.add_row(str(point["update"]), f"{point['env_steps']:,}", f"{point['episode_return']:.4g}",
                      f"{point['steps_per_s']:,.0f}")
    console = Console()
    console.print(table)
    if "random_policy_return" in summary:
        console.print(f"random policy return: {np.mean(summary['random_policy_return']):.4g}")
    if "greedy_return" in summary:
        console.print(f"trained policy return (greedy): {np.mean(summary['greedy_return']):.4g}; "
                      f"last chunk (sampled): {curve[-1]['episode_return']:.4g}" if curve else "")


# ----------------------------------------------------------------------------- Hydra
def objective(summary: dict[str, Any]) -> float:
    """The number a sweeper maximises (hydra/sweeper=tune): the mean greedy evaluation return over
    the run's policies, or without evaluation (eval_episodes_envs=0, or a run stopped early) the mean
    training return of the last chunk; NaN when neither exists."""
    if "greedy_return" in summary:
        return float(np.mean(summary["greedy_return"]))
    return float(summary["curve"][-1]["episode_return"]) if summary["curve"] else float("nan")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    try:
        return objective(run(cfg, Path(HydraConfig.get().runtime.output_dir)))
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    # `scenario=` names a Hydra group option; a path to a YAML file goes to scenario_file instead (Hydra
    # would silently skip an `optional` group option it cannot find)
    sys.argv = [f"scenario_file={Path(a.split('=', 1)[1]).resolve()}"
                if a.startswith("scenario=") and a.endswith((".yaml", ".yml")) else a for a in sys.argv]
    _hydra_main()


if __name__ == "__main__":
    main()
