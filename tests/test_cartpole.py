"""The learner's sanity check: the same PPO code, with splitrl/conf/agent/ppo_cartpole.yaml, solves gymnax
CartPole-v1 (mean return >= 475 of the trained stochastic policy; the maximum is 500)."""

import time

import gymnax
import jax
import jax.numpy as jnp
import yaml

from splitrl.agents import make_policy, ppo
from splitrl.agents.config import PPOConfig
from splitrl.config import build

from .conftest import CONF


def test_flat_ppo_solves_cartpole():
    data = yaml.safe_load((CONF / "agent" / "ppo_cartpole.yaml").read_text())
    cfg = build(PPOConfig, data | {"hidden": tuple(data["hidden"])}, "agent")
    env, env_params = gymnax.make(cfg.gymnax_id)
    policy = make_policy(cfg, env, env_params)
    hp = ppo.HParams(lr=jnp.float32(cfg.lr), ent_coef=jnp.float32(cfg.ent_coef), reward_v=jnp.float32(1.0))
    start = time.perf_counter()
    state, metrics = jax.jit(ppo.make_train(cfg, env, env_params, policy))(jax.random.PRNGKey(0), hp)
    jax.block_until_ready(state.params)
    seconds = time.perf_counter() - start
    result = jax.jit(ppo.evaluate_returns, static_argnums=(0, 1, 5, 6, 7))(
        policy, env, env_params, state.params, jax.random.PRNGKey(42), 64, 1001, "sample")
    print(f"CartPole-v1: {cfg.total_timesteps} steps in {seconds:.1f} s (with compile), "
          f"sampled-policy return {float(result['episode_return']):.1f} over {int(result['episodes'])} episodes")
    assert int(result["episodes"]) >= 64
    assert float(result["episode_return"]) >= 475.0
