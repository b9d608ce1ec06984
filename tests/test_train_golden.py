"""Speed work on the PPO update must not change what it computes: short fixed-seed trainings give the
parameters, metrics and final observations recorded from the code before that work (tests/golden_train.json: per parameter
leaf its sum and sum of squares, every metric of every update).

On the machine the values were recorded on the runs are bit-identical. The tolerance (1e-5 relative, 1e-6
absolute) only allows another CPU or XLA build to round the same float32 program differently: on a Xeon
without the recording host's rounding (2026-12-01) four updates drift by up to 1.2e-7 in absolute terms
(explained variance, policy loss: differences of nearly equal numbers), 4e-3 relative on a policy loss of
1.3e-5. Any change to what the update computes moves these by orders of magnitude more."""

import json
from pathlib import Path

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

import splitrl.env as split_env
from splitrl.agents import make_policy, ppo
from splitrl.agents.config import PPOConfig
from splitrl.resources import config_dir

GOLDEN = json.loads((Path(__file__).parent / "golden_train.json").read_text())


def agent_config(name: str, **over) -> PPOConfig:
    path = config_dir() / "agent" / f"{name}.yaml"
    return PPOConfig.from_dict(yaml.safe_load(path.read_text()) | over, name)


def cases():
    # hppo: the default agent (DPP guide, separate critic) over 4 updates: β goes 1 -> 1/3 -> 0 -> 0
    yield "hppo", agent_config("hppo", num_envs=8, num_steps=32, guide_states=64, total_timesteps=8 * 32 * 4), "default"
    yield "hppo_shared_noguide", agent_config("hppo", num_envs=8, num_steps=16, guide="none", critic="shared",
                                              manager_lr_scale=0.5, total_timesteps=8 * 16 * 3), "default"
    yield "cartpole", agent_config("ppo_cartpole", num_envs=8, num_steps=32, total_timesteps=8 * 32 * 3), "CartPole-v1"


def summary(state, metrics) -> dict:
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        x = np.asarray(leaf, np.float64)
        out["p" + jax.tree_util.keystr(path)] = [x.sum(), np.square(x).sum()]
    obs = np.asarray(jax.tree.leaves(state.obs)[0], np.float64)   # where the envs stand: the rollouts match too
    out["obs"] = [obs.sum(), np.square(obs).sum()]
    return out | {f"m/{k}": np.asarray(v, np.float64).ravel().tolist() for k, v in metrics.items()}


@pytest.mark.parametrize("name,cfg,env_name", list(cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_short_training_matches_the_recorded_run(name, cfg, env_name):
    env, env_params = gymnax.make(env_name) if env_name == "CartPole-v1" else split_env.make(env_name)
    train = ppo.make_train(cfg, env, env_params, make_policy(cfg, env, env_params))
    hp = ppo.HParams(lr=jnp.float32(cfg.lr), ent_coef=jnp.float32(cfg.ent_coef), reward_v=jnp.float32(1.0))
    got = summary(*jax.jit(train)(jax.random.PRNGKey(7), hp))
    want = GOLDEN[name]
    assert set(got) == set(want)
    for key in want:
        assert np.asarray(got[key]) == pytest.approx(np.asarray(want[key]), rel=1e-5, abs=1e-6), key
