"""Chen et al.'s adaptive layer splitting (arXiv 2406.02616) as a baseline: their MDP
(`splitrl.env.chen.ChenEnv`) with their MLP reward surrogate, trained with our PPO (splitrl.agents.ppo;
no second PPO). The surrogate's records are sampled from our PPL table (the ΔPPL our env would charge
a pure layer split in fp16 at that residual loss and SNR).

As a policy in our env (`ChenPPO`): the trained actor reads the same three numbers from the slot's
observable state, moves its split from the last boundary, transmits fp16 and keeps every unit of the
boundary layer on the cloud (a pure layer split).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from splitrl.agents.config import PPOConfig
from splitrl.baselines.base import PolicyBase
from splitrl.env import features as F
from splitrl.env.channel import loss_probability
from splitrl.env.chen import ChenEnv, ChenParams, Surrogate, chen_features, interior_splits
from splitrl.env.cost import request_cost
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import Action, Conditions, EnvParams


# ----------------------------------------------------------------------------- fitting the surrogate
def surrogate_records(env: SplitEnv, env_params: EnvParams, key, n: int):
    """n records (features f32[n, 3], ΔPPL f32[n]) sampled from the PPL table through the env's cost
    model: split uniform over the interior splits, SNR and fading scale from the scenario's
    stationary distributions (twice as wide, to cover the tails)."""
    p = env_params.channel
    lo, hi = interior_splits(env_params, env.n_layers)
    kb, ks, kf = jax.random.split(key, 3)
    b = jax.random.randint(kb, (n,), lo, hi + 1)
    snr = p.snr_db_mean + 2 * p.snr_db_std * jax.random.normal(ks, (n,))
    log_sigma = p.fade_log_mean + 2 * p.fade_log_std * jax.random.normal(kf, (n,))
    loss = loss_probability(p.h_th, log_sigma)
    U = env.n_units

    def ppl(b, snr_db, loss_p):   # a fast, clean link: only the damage of the split itself
        cond = Conditions(bw=1e9, rtt=p.rtt_mean_s, loss_p=loss_p, snr_db=snr_db, cloud_load=0.0, cloud_wait=0.0,
                          connected=1.0, reconnect=0.0)
        return request_cost(env_params, b, 0, jnp.zeros(U), 256.0, 32.0, cond)["delta_ppl"]

    dppl = jax.vmap(ppl)(b, snr, loss)
    x = jnp.stack([F.value("snr", snr, env_params, env.n_layers, jnp), log_sigma, b / env.n_layers], -1)
    return x.astype(jnp.float32), dppl.astype(jnp.float32)


def fit_surrogate(env: SplitEnv, env_params: EnvParams, key, n_records: int = 4096, steps: int = 600, lr: float = 3e-3):
    """Fit the surrogate by Adam on the mean squared error of log(1 + ΔPPL); returns (params, held-out
    RMSE, held-out target std), both in log(1 + ΔPPL)."""
    k_rec, k_test, k_init = jax.random.split(key, 3)
    x, y = surrogate_records(env, env_params, k_rec, n_records)
    xt, yt = surrogate_records(env, env_params, k_test, 1024)
    y, yt = jnp.log1p(y), jnp.log1p(yt)
    net = Surrogate()
    params = net.init(k_init, x[:1])
    tx = optax.adam(lr)

    @jax.jit
    def fit(params):
        def step(carry, _):
            params, opt = carry
            loss, g = jax.value_and_grad(lambda q: jnp.mean((net.apply(q, x) - y) ** 2))(params)
            upd, opt = tx.update(g, opt, params)
            return (optax.apply_updates(params, upd), opt), loss
        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
        return params, jnp.sqrt(jnp.mean((net.apply(params, xt) - yt) ** 2))

    params, rmse = fit(params)
    return params, float(rmse), float(jnp.std(yt))


def chen_ppo_config(num_envs: int = 64, total_timesteps: int = 64_000, hidden=(64, 64)) -> PPOConfig:
    """Their PPO settings: lr 3e-4, γ 0.99, clip 0.2, GAE λ 0.95, 5 steps per episode (one rollout
    of 5 steps per env per update)."""
    return PPOConfig(name="chen_ppo", policy="flat", env="split", gymnax_id="", num_envs=num_envs, num_steps=5,
                     total_timesteps=total_timesteps, update_epochs=4, num_minibatches=4, gamma=0.99, gae_lambda=0.95,
                     clip_eps=0.2, clip_value=True, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, lr=3e-4,
                     anneal_lr=True, normalize_advantages=True, hidden=tuple(hidden), critic="separate",
                     manager_lr_scale=1.0, guide="none", guide_coef=0.0, guide_final=0.0, guide_anneal=1.0, guide_states=1,
                     team_spirit=0.0, guide_congestion=0.0, pretrain_rounds=0, pretrain_states=1, pretrain_steps=1,
                     pretrain_lr=1e-3)


@dataclasses.dataclass(frozen=True)
class ChenTrained:
    actor: Any          # flat policy params
    surrogate: Any
    surrogate_rmse: float
    surrogate_target_std: float
    lo: int
    hi: int


def train_chen(env: SplitEnv, env_params: EnvParams, key, lam: float = 1.0, total_timesteps: int = 64_000,
               hidden=(64, 64)) -> ChenTrained:
    """Fit the surrogate, then train their PPO agent on their MDP (pure; one jit)."""
    from splitrl.agents import ppo
    from splitrl.agents.networks import FlatPolicy
    k_sur, k_ppo = jax.random.split(key)
    sur, rmse, std = fit_surrogate(env, env_params, k_sur)
    lo, hi = interior_splits(env_params, env.n_layers)
    cenv = ChenEnv(env, lo, hi)
    cparams = ChenParams(inner=env_params, surrogate=sur, lam=jnp.float32(lam), max_steps_in_episode=jnp.int32(5))
    cfg = chen_ppo_config(total_timesteps=total_timesteps, hidden=hidden)
    policy = FlatPolicy(3, cfg.hidden, cfg.critic)
    train = jax.jit(ppo.make_train(cfg, cenv, cparams, policy))
    hp = ppo.HParams(lr=jnp.float32(cfg.lr), ent_coef=jnp.float32(cfg.ent_coef), reward_v=jnp.float32(1.0))
    state, _ = train(k_ppo, hp)
    return ChenTrained(actor=state.params, surrogate=sur, surrogate_rmse=rmse, surrogate_target_std=std, lo=lo, hi=hi)


# ----------------------------------------------------------------------------- the policy
@dataclasses.dataclass(frozen=True)
class ChenPPO(PolicyBase):
    """Chen et al.'s layer-wise PPO (splitrl/baselines/chen.py): trained on their MDP (surrogate reward,
    5-step episodes) at `init`, then run greedily in our env: split ± 1 from the last boundary."""
    n_layers: int = 0
    lam: float = 1.0
    total_timesteps: int = 64_000
    name: str = "chen_ppo"

    def bind(self, env, env_params):
        return dataclasses.replace(self, n_layers=env.n_layers)

    def init(self, env, env_params, spec=None, key=None):
        t = train_chen(env, env_params, jax.random.PRNGKey(0) if key is None else key, self.lam, self.total_timesteps)
        return {"actor": t.actor, "lo": jnp.int32(t.lo), "hi": jnp.int32(t.hi),
                "surrogate_rmse": jnp.float32(t.surrogate_rmse), "surrogate_target_std": jnp.float32(t.surrogate_target_std)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        from splitrl.agents.networks import FlatPolicy
        split = jnp.clip(state.last_boundary, pparams["lo"], pparams["hi"])
        x = chen_features(env_params, state, split, self.n_layers)
        a = FlatPolicy(3, (64, 64), "separate").greedy(pparams["actor"], x)
        mask = env_params.costs.boundary_mask
        idx = jnp.arange(mask.shape[0])
        target = jnp.clip(split + a - 1, pparams["lo"], pparams["hi"])
        ok = mask & (idx <= target) & (idx >= pparams["lo"])
        b = jnp.where(ok.any(), jnp.max(jnp.where(ok, idx, -1)), pparams["lo"]).astype(jnp.int32)
        return Action(boundary=b, fmt=jnp.int32(0), units=jnp.zeros(obs.unit_mask.shape[1], jnp.int32))

