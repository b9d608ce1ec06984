"""Imitate the DPP guide before PPO starts: DAgger rounds (Ross, Gordon and Bagnell, AISTATS 2011).

Why a phase of its own. The in-loop guide (splitrl/agents/guide.py) labels a few hundred visited states
per update and shares each gradient step with PPO's loss. On the LLaMA-2-7B peak fleet the policy it
leaves agreed with congestion DPP on ~95 % of device-states and was ~17 % worse per slot than the
controller it copied: near a saturated cloud a few per cent of wrong offloads grow everyone's queue.
The same network fitted offline to the controller's labels on states its own rollouts visit reaches
~99 % agreement and the controller's objective within a few per cent (docs/fleet.md): capacity was not
the limit, the volume and focus of the imitation were. So PPO starts from the controller.

Round r of `pretrain_rounds`, all inside one jit (and vmapped over a run's members like the updates):
  1. roll the current policy (sampled, as PPO will) for `num_steps` steps of the `num_envs` envs;
  2. label `pretrain_states` of the visited states with the guide's controller (myopic DPP, or congestion
     DPP on a fleet with `guide_congestion`) and add them to the dataset: the rounds' labels aggregate, so
     the data cover the states the imitating policy itself reaches (DAgger's point: plain behaviour
     cloning on the controller's own states drifts off them and never sees its mistakes' consequences);
  3. `pretrain_steps` Adam steps at `pretrain_lr`, each on a minibatch of the dataset (the guide's
     −log π(a_DPP | s)) and a minibatch of this round's states for the critic (PPO's value loss against
     the round's λ-returns), so PPO starts with a value function of the policy it starts from.
PPO then continues from these weights, env states and key, with a fresh optimiser state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from splitrl.agents import guide as G
from splitrl.agents import ppo as P
from splitrl.agents.config import PPOConfig


def make_pretrain(cfg: PPOConfig, env, env_params, policy, reward_v_field: str | None = None):
    """`pretrain(state, hp) -> (state, metrics[pretrain_rounds])`: the DAgger rounds (module docstring),
    pure and jittable; the identity (no rounds) when `cfg.pretrain_rounds` is 0."""
    if not cfg.pretrain_rounds:
        return lambda state, hp: (state, {})
    label = G.make_labeller(cfg, env, env_params, n_states=cfg.pretrain_states)
    tx = P.make_optimizer(cfg)
    axes = P.agent_axes(env)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731

    def visit(params, state: P.LearnerState, params_env, key):
        """One rollout of the current policy: (carry after it, labelled GuideBatch [S], the critic's
        (obs, λ-return) over every visited state)."""
        roll_key, label_key = jax.random.split(key)
        last, traj = P.collect(policy, env, params_env, params, state, roll_key, cfg.num_steps, keep_state=True)
        traj = P.agents_join_batch(env, traj, cfg.team_spirit)   # as in the PPO update
        labelled = label(params_env, jax.tree.map(flat, traj.obs), jax.tree.map(flat, traj.state), label_key)
        _, target = P.advantages(policy, cfg, params, traj)
        return last, labelled, (jax.tree.map(flat, traj.obs), flat(target)), traj.reward.mean()

    def fit(params, opt_state, lr, data, filled, critic, key):
        """`pretrain_steps` Adam steps on the first `filled` labels of `data` and this round's critic targets."""
        obs_v, target = critic
        n_v = target.shape[0]
        size = min(cfg.minibatch_size * (axes[0] if axes else 1), cfg.pretrain_states, n_v)

        def step(carry, k):
            params, opt_state = carry
            k_label, k_value = jax.random.split(k)
            idx = jax.random.randint(k_label, (size,), 0, filled)
            batch = jax.tree.map(lambda x: x[idx], data)
            vidx = jax.random.randint(k_value, (size,), 0, n_v)

            def loss(p):
                nll, agree = G.guide_loss(policy, p, batch)
                value = jax.vmap(policy.value, (None, 0))(p, jax.tree.map(lambda x: x[vidx], obs_v))
                value_loss = 0.5 * jnp.mean(jnp.square(value - target[vidx]))
                return nll + cfg.vf_coef * value_loss, {"guide_nll": nll, "guide_agree": agree, "value_loss": value_loss}

            grads, diag = jax.grad(loss, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
            return (params, opt_state), diag

        (params, opt_state), diag = jax.lax.scan(step, (params, opt_state), jax.random.split(key, cfg.pretrain_steps))
        return params, opt_state, jax.tree.map(lambda d: d[-1], diag)

    def pretrain(state: P.LearnerState, hp: P.HParams):
        params_env = P.env_params_with(env_params, hp, reward_v_field)
        n_labels = cfg.pretrain_rounds * cfg.pretrain_states
        shapes = jax.eval_shape(lambda: visit(state.params, state, params_env, state.key)[1])
        data0 = jax.tree.map(lambda s: jnp.zeros((n_labels,) + s.shape[1:], s.dtype), shapes)
        per_round = shapes.action.boundary.shape[0]   # pretrain_states, or every visited state if fewer

        def round_(carry, r):
            state, opt_state, data = carry
            key, visit_key, fit_key = jax.random.split(state.key, 3)
            last, labelled, critic, reward = visit(state.params, state, params_env, visit_key)
            data = jax.tree.map(lambda d, x: jax.lax.dynamic_update_slice_in_dim(d, x, r * per_round, 0), data, labelled)
            params, opt_state, diag = fit(state.params, opt_state, cfg.pretrain_lr, data, (r + 1) * per_round, critic, fit_key)
            state = state.replace(params=params, env_state=last.state, obs=last.obs,
                                  running_return=last.episode_return, key=key)
            return (state, opt_state, data), diag | {"reward_mean": reward}

        (state, _, _), metrics = jax.lax.scan(round_, (state, tx.init(state.params), data0),
                                              jnp.arange(cfg.pretrain_rounds))
        return state.replace(opt_state=tx.init(state.params)), metrics

    return pretrain
