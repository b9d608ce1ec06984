"""One readable PPO, for the hierarchical and the flat policy alike (the policy object hides which).

Reading order: the records (`Transition`, `LearnerState`, `HParams`), the rollout step, GAE, the loss,
the minibatch step, then `make_update` (one whole PPO update: rollout scan -> GAE -> epochs of
minibatches, all pure) and `make_train` (init + a scan of updates). The host loop in `splitrl.training.train`
runs `run_updates` in jitted chunks and logs between them.

Conventions: trajectories are time-major [T, N]; `_t` is the step, `next_value_t` the bootstrap value
of the observation that step t led to. Truncation (the time limit) bootstraps from
`info["final_observation"]`; only `terminated` zeroes the bootstrap.

Hyperparameters that are arrays (`HParams`: learning rate, entropy coefficient, Lyapunov V) are
traced, so `vmap(train)` over them trains many policies in one compile.

A fleet (splitrl/env/fleet.py: obs, actions, rewards and dones with a device axis [N]) trains one policy
shared by all devices: the rollout is [T, E, N], and from GAE on the batch is envs × devices, [T, E·N]
(each device's advantages run along its own trajectory). `agent_axes(env)` is () for a single-device
env, so that path is unchanged.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct

from splitrl.agents import guide as G
from splitrl.agents import shuffle
from splitrl.agents.config import PPOConfig
from splitrl.env import rollout as R


class HParams(struct.PyTreeNode):
    """Traced hyperparameters, one value per trained policy (vmapped)."""
    lr: jax.Array          # f32[]
    ent_coef: jax.Array    # f32[]
    reward_v: jax.Array    # f32[]; written into EnvParams.<reward_v_field> when that is set


class Transition(struct.PyTreeNode):
    obs: Any                 # observation the action was taken in
    action: Any
    log_prob: jax.Array      # f32, behaviour policy
    value: jax.Array         # f32, V(obs_t)
    reward: jax.Array        # f32
    terminated: jax.Array    # bool: true end, no bootstrap
    done: jax.Array          # bool: terminated or truncated (the env auto-reset)
    final_obs: Any           # info["final_observation"]: obs_{t+1} before any reset
    episode_return: jax.Array  # f32: the finished episode's return where done, else 0
    env_metrics: dict        # f32 info entries (latency, energy, ...)
    state: Any = None        # the env state acted in (kept only when a guide labels states)


# the Transition fields with a device axis on a fleet (env_metrics are averaged, states stay whole)
AGENT_FIELDS = ("obs", "action", "log_prob", "value", "reward", "terminated", "done", "final_obs", "episode_return")


class LearnerState(struct.PyTreeNode):
    params: Any
    opt_state: Any
    env_state: Any           # [N] env states
    obs: Any                 # [N] current observations
    running_return: jax.Array  # f32[E] (a fleet: [E, N]) return of the episode in progress
    key: jax.Array           # PRNG key (raw uint32[2], checkpointable)
    update_step: jax.Array   # i32[] updates done so far


def make_optimizer(cfg: PPOConfig) -> optax.GradientTransformation:
    """Adam without the learning rate: the (traced, annealed) step size is applied in `minibatch_step`."""
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.scale_by_adam(eps=1e-5))


def replace_field(params, dotted: str, value):
    """`params` with the (possibly nested, dotted: "reward.V") dataclass field set to `value`."""
    head, _, rest = dotted.partition(".")
    return params.replace(**{head: replace_field(getattr(params, head), rest, value) if rest else value})


def get_field(params, dotted: str):
    for name in dotted.split("."):
        params = getattr(params, name)
    return params


def env_params_with(env_params, hp: HParams, reward_v_field: str | None):
    """EnvParams with V from the traced hyperparameters when `reward_v_field` (e.g. "reward.V") is set;
    a per-device field (a fleet's "device.reward.V", [N]) gets V on every device."""
    if not reward_v_field:
        return env_params
    old = get_field(env_params, reward_v_field)
    v = hp.reward_v if jnp.ndim(old) == 0 else jnp.broadcast_to(hp.reward_v, jnp.shape(old))
    return replace_field(env_params, reward_v_field, v)


# ----------------------------------------------------------------------------- fleets: a device axis
def agent_axes(env) -> tuple[int, ...]:
    """The axes a step adds beside the env axis: () for a single-device env, (N,) for a fleet."""
    n = getattr(env, "n_devices", None)
    return () if n is None else (n,)


def per_agent(fn, axes: tuple[int, ...], in_axes):
    """`fn` on one observation, vmapped over the env axis and every agent axis."""
    for _ in range(1 + len(axes)):
        fn = jax.vmap(fn, in_axes)
    return fn


def agent_keys(keys, axes: tuple[int, ...]):
    """One key per env [E] -> one per env and device [E, N] (unchanged without a device axis)."""
    return keys if not axes else jax.vmap(lambda k: jax.random.split(k, axes[0]))(keys)


def merge_agents(x):
    """[T, E, N, ...] -> [T, E·N, ...]: the devices of a fleet join the batch."""
    return x.reshape((x.shape[0], -1) + x.shape[3:])


# ----------------------------------------------------------------------------- rollout
def team_reward(reward, team_spirit):
    """A fleet's per-device rewards [..., N] mixed with their mean, (1 − τ)·r_i + τ·mean_j r_j: the sum over
    the devices (the fleet's objective) is unchanged, and τ > 0 charges each device part of what its choice
    costs the others (the cloud's queue makes everyone wait). OpenAI Five's "team spirit" (Berner et al., 2019)."""
    return (1.0 - team_spirit) * reward + team_spirit * reward.mean(-1, keepdims=True)


def collect(policy, env, env_params, params, state: LearnerState, key, num_steps: int, keep_state: bool = False):
    """`num_steps` vectorised env steps with the current (stochastic) policy, through the one rollout
    loop (splitrl.env.rollout). Returns (carry after the last step, Transition[T, E] or, on a fleet,
    [T, E, N] with env_metrics [T, E]: per-device fields averaged over the devices)."""
    num_envs, axes = state.running_return.shape[0], agent_axes(env)

    def act(obs, _state, policy_keys, _env_keys):
        sample = per_agent(policy.sample, axes, (None, 0, 0))
        action, log_prob, value = sample(params, obs, agent_keys(policy_keys, axes))
        return action, (log_prob, value)

    def record(s: R.Step) -> Transition:
        return Transition(obs=s.obs, action=s.action, log_prob=s.aux[0], value=s.aux[1], reward=s.reward,
                          terminated=s.terminated, done=s.terminated | s.truncated,
                          final_obs=s.info["final_observation"], episode_return=s.episode_return,
                          env_metrics=R.info_metrics(s.info, num_envs, axes),
                          state=s.state if keep_state else None)

    carry = R.Carry(obs=state.obs, state=state.env_state, episode_return=state.running_return)
    return R.rollout(env, env_params, act, carry, jax.random.split(key, num_steps), R.training_keys(num_envs), record)


# ----------------------------------------------------------------------------- GAE
def gae(reward_t, value_t, next_value_t, terminated_t, done_t, gamma, gae_lambda):
    """Generalised advantage estimation (Schulman et al. 2016), reverse `lax.scan` over time.

        δ_t = r_t + γ·(1 − terminated_t)·V(s'_t) − V(s_t)
        A_t = δ_t + γ·λ·(1 − done_t)·A_{t+1}

    where s'_t is the observation step t led to (before any auto-reset), so a truncated step
    bootstraps from V(final_observation) and the recursion stops at every episode end.
    All inputs [T, N]; returns (advantages, returns = advantages + values), both [T, N].
    """
    chex.assert_equal_shape([reward_t, value_t, next_value_t, terminated_t, done_t])
    chex.assert_rank(reward_t, 2)
    delta_t = reward_t + gamma * (1.0 - terminated_t) * next_value_t - value_t
    continue_t = gamma * gae_lambda * (1.0 - done_t)

    def backward(adv_tp1, inputs):
        delta, cont = inputs
        adv = delta + cont * adv_tp1
        return adv, adv

    _, adv_t = jax.lax.scan(backward, jnp.zeros_like(delta_t[0]), (delta_t, continue_t), reverse=True)
    return adv_t, adv_t + value_t


def agents_join_batch(env, traj: Transition, team_spirit) -> Transition:
    """On a fleet the devices join the batch, [T, E, N] -> [T, E·N], after the team reward mixes their
    rewards (the env states stay [T, E]); a single-device trajectory is returned as it is."""
    if not agent_axes(env):
        return traj
    traj = traj.replace(reward=team_reward(traj.reward, team_spirit))
    return traj.replace(**{f: jax.tree.map(merge_agents, getattr(traj, f)) for f in AGENT_FIELDS})


def advantages(policy, cfg: PPOConfig, params, traj: Transition):
    """(GAE advantages, λ-returns) of a [T, N] trajectory, bootstrapped by `params`' critic."""
    next_value = jax.vmap(jax.vmap(policy.value, (None, 0)), (None, 0))(params, traj.final_obs)
    return gae(traj.reward, traj.value, next_value, traj.terminated.astype(jnp.float32),
               traj.done.astype(jnp.float32), cfg.gamma, cfg.gae_lambda)


# ----------------------------------------------------------------------------- loss
class Batch(struct.PyTreeNode):
    obs: Any
    action: Any
    log_prob: jax.Array
    value: jax.Array
    advantage: jax.Array
    target: jax.Array


def ppo_loss(policy, cfg: PPOConfig, params, batch: Batch, ent_coef):
    """Clipped-surrogate PPO loss on one minibatch; returns (loss, diagnostics)."""
    chex.assert_equal_shape([batch.log_prob, batch.value, batch.advantage, batch.target])
    log_prob, entropy, value = jax.vmap(policy.evaluate, (None, 0, 0))(params, batch.obs, batch.action)
    log_ratio = log_prob - batch.log_prob
    ratio = jnp.exp(log_ratio)
    adv = batch.advantage
    if cfg.normalize_advantages:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    policy_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv).mean()
    value_err = jnp.square(value - batch.target)
    if cfg.clip_value:
        clipped = batch.value + jnp.clip(value - batch.value, -cfg.clip_eps, cfg.clip_eps)
        value_err = jnp.maximum(value_err, jnp.square(clipped - batch.target))
    value_loss = 0.5 * value_err.mean()
    entropy = entropy.mean()
    loss = policy_loss + cfg.vf_coef * value_loss - ent_coef * entropy
    return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                  "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
                  "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > cfg.clip_eps).astype(jnp.float32))}


def minibatch_step(policy, cfg: PPOConfig, tx, lr, ent_coef, guide, beta, carry, batch: Batch):
    """One gradient step on the PPO loss, plus beta x the guide's behaviour-cloning loss when a guide
    labelled states this update (splitrl/agents/guide.py)."""
    params, opt_state = carry

    def loss(p):
        value, diag = ppo_loss(policy, cfg, p, batch, ent_coef)
        if guide is None:
            return value, diag
        nll, agree = G.guide_loss(policy, p, guide)
        # β = 0: the labels are zeros (G.label_while_active), the term adds 0 and so does its gradient
        active = beta > 0
        return value + beta * nll, diag | {"guide_nll": jnp.where(active, nll, 0.0),
                                           "guide_agree": jnp.where(active, agree, 0.0), "guide_beta": beta}

    grads, diag = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    scale = policy.update_scale(params, cfg.manager_lr_scale)
    params = jax.tree.map(lambda p, u, s: p - lr * s * u, params, updates, scale)
    return (params, opt_state), {**diag, "grad_norm": optax.tree.norm(grads)}


def epoch_step(policy, cfg: PPOConfig, tx, lr, ent_coef, guide, beta, flat_batch: Batch, carry, key):
    """One pass over the rollout in shuffled minibatches."""
    n = flat_batch.log_prob.shape[0]   # cfg.batch_size, times N on a fleet
    perm = shuffle.permutation(key, n)   # jax.random.permutation's integers, faster on CPU
    minibatches = jax.tree.map(
        lambda x: x[perm].reshape((cfg.num_minibatches, n // cfg.num_minibatches) + x.shape[1:]), flat_batch)
    return jax.lax.scan(partial(minibatch_step, policy, cfg, tx, lr, ent_coef, guide, beta), carry, minibatches)


def explained_variance(values, targets):
    return 1.0 - jnp.var(targets - values) / jnp.maximum(jnp.var(targets), 1e-8)


# ----------------------------------------------------------------------------- update / train
def make_update(cfg: PPOConfig, env, env_params, policy, reward_v_field: str | None = None):
    """`update(state, hp) -> (state, metrics)`: one PPO update, pure and jittable."""
    tx = make_optimizer(cfg)
    label = G.make_labeller(cfg, env, env_params) if cfg.guide == "dpp" else None

    def update(state: LearnerState, hp: HParams):
        params_env = env_params_with(env_params, hp, reward_v_field)
        key, rollout_key, epoch_key = jax.random.split(state.key, 3)
        last, traj = collect(policy, env, params_env, state.params, state, rollout_key, cfg.num_steps,
                             keep_state=label is not None)
        traj = agents_join_batch(env, traj, cfg.team_spirit)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        beta = G.coefficient(cfg, state.update_step)
        guide = None if label is None else G.label_while_active(
            label, beta, params_env, jax.tree.map(flat, traj.obs), jax.tree.map(flat, traj.state),
            jax.random.fold_in(epoch_key, 1))
        adv, target = advantages(policy, cfg, state.params, traj)
        batch = Batch(obs=traj.obs, action=traj.action, log_prob=traj.log_prob, value=traj.value,
                      advantage=adv, target=target)
        flat_batch = jax.tree.map(flat, batch)
        frac = 1.0 - state.update_step / cfg.num_updates if cfg.anneal_lr else 1.0
        lr = hp.lr * frac
        (params, opt_state), diag = jax.lax.scan(
            partial(epoch_step, policy, cfg, tx, lr, hp.ent_coef, guide, beta, flat_batch),
            (state.params, state.opt_state), jax.random.split(epoch_key, cfg.update_epochs))
        metrics = {k: v.mean() for k, v in diag.items()}   # mean over epochs and minibatches
        metrics |= {
            "explained_variance": explained_variance(traj.value, target),
            "lr": jnp.asarray(lr, jnp.float32),
            "reward_mean": traj.reward.mean(),
            "episode_return_sum": traj.episode_return.sum(),
            "episodes": traj.done.sum().astype(jnp.float32),
        } | {f"env/{k}": v.mean() for k, v in traj.env_metrics.items()}
        new_state = state.replace(params=params, opt_state=opt_state, env_state=last.state, obs=last.obs,
                                  running_return=last.episode_return, key=key, update_step=state.update_step + 1)
        return new_state, metrics

    return update


def make_init(cfg: PPOConfig, env, env_params, policy, reward_v_field: str | None = None):
    """`init(key, hp) -> LearnerState`: network, optimiser, `num_envs` reset environments."""
    tx = make_optimizer(cfg)

    def init(key, hp: HParams) -> LearnerState:
        key, init_key, reset_key = jax.random.split(key, 3)
        obs, env_state = jax.vmap(env.reset, (0, None))(
            jax.random.split(reset_key, cfg.num_envs), env_params_with(env_params, hp, reward_v_field))
        axes = agent_axes(env)
        params = policy.init(init_key, jax.tree.map(lambda x: x[(0,) * (1 + len(axes))], obs))
        return LearnerState(params=params, opt_state=tx.init(params), env_state=env_state, obs=obs,
                            running_return=jnp.zeros((cfg.num_envs,) + axes, jnp.float32), key=key,
                            update_step=jnp.zeros((), jnp.int32))

    return init


def run_updates(update, num_updates: int, state: LearnerState, hp: HParams):
    """`num_updates` updates in one `lax.scan`; metrics stacked [num_updates]."""
    return jax.lax.scan(lambda s, _: update(s, hp), state, None, length=num_updates)


def make_train(cfg: PPOConfig, env, env_params, policy, reward_v_field: str | None = None):
    """`train(key, hp) -> (final LearnerState, metrics[num_updates])`: the whole run (the guide's DAgger
    rounds first when `cfg.pretrain_rounds`: splitrl/agents/pretrain.py), pure.
    `jax.jit(train)` trains one policy; `jax.jit(jax.vmap(train))(keys, hps)` many in one compile."""
    from splitrl.agents.pretrain import make_pretrain  # it builds on this module's pieces

    init = make_init(cfg, env, env_params, policy, reward_v_field)
    pretrain = make_pretrain(cfg, env, env_params, policy, reward_v_field)
    update = make_update(cfg, env, env_params, policy, reward_v_field)

    def train(key, hp: HParams):
        return run_updates(update, cfg.num_updates, pretrain(init(key, hp), hp)[0], hp)

    return train


# ----------------------------------------------------------------------------- evaluation
def evaluate_returns(policy, env, env_params, params, key, num_envs: int, num_steps: int, mode: str):
    """Mean return of the episodes finished within `num_steps` steps of `num_envs` envs, and the mean
    of each env metric. mode: "greedy" (argmax), "sample" (the stochastic policy) or "uniform" (random
    over the allowed actions: the random-policy baseline; `params` is ignored). On a fleet the return is
    per device and episode, and per-device metrics are averaged over the devices."""
    if mode not in ("greedy", "sample", "uniform"):
        raise ValueError(f"mode = {mode!r}: must be greedy, sample or uniform")
    reset_key, key = jax.random.split(key)
    axes = agent_axes(env)

    def act(obs, _state, policy_keys, _env_keys):
        if mode == "greedy":
            return per_agent(policy.greedy, axes, (None, 0))(params, obs), None
        keys = agent_keys(policy_keys, axes)
        if mode == "sample":
            return per_agent(policy.sample, axes, (None, 0, 0))(params, obs, keys)[0], None
        return per_agent(policy.sample_uniform, axes, 0)(obs, keys), None

    def record(s: R.Step) -> dict:
        done = s.terminated | s.truncated
        return R.info_metrics(s.info, num_envs, axes) | {"return_sum": s.episode_return.sum(),
                                                         "episodes": done.sum(), "reward": s.reward}

    carry = R.start(env, env_params, jax.random.split(reset_key, num_envs))
    if axes:   # a fleet's episode returns are per device
        carry = carry.replace(episode_return=jnp.zeros((num_envs,) + axes, jnp.float32))
    _, out = R.rollout(env, env_params, act, carry, jax.random.split(key, num_steps), R.training_keys(num_envs), record)
    result = {k: v.mean() for k, v in out.items() if k not in ("return_sum", "episodes")}
    result["episode_return"] = out["return_sum"].sum() / jnp.maximum(out["episodes"].sum(), 1)
    result["episodes"] = out["episodes"].sum()
    return result
