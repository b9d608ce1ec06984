"""Chen et al.'s adaptive layer splitting (arXiv 2406.02616) as a baseline: their MDP, their MLP
reward surrogate, trained with our PPO (splitrl.agents.ppo; no second PPO).

Their MDP, wrapped around our env (`ChenEnv`):
  observation  f32[3] = (channel noise: (SNR_dB − 20)/10 when the scenario has analog noise, else 0;
                         Rayleigh fading scale: log σ_h; split point b / L)
  action       Discrete(3): the split point moves −1 / 0 / +1 (within the allowed interior splits
               1..b_max: their split is between layers, so neither cloud-only nor edge-only)
  reward       −(PPL_surrogate(noise, fading, b) / acc_ref + λ · b / L)   (λ·b/L: the UE's compute,
               ∝ 12·d·d_mid² FLOPs per layer on the edge, normalised by the whole model's)
  episode      5 steps (their setting); the channel evolves by our env's dynamics.
Their model-based trick: the reward's PPL comes from an MLP (`Surrogate`) fitted to measured
records instead of a measurement per step; here the records are sampled from our PPL table (the
ΔPPL our env would charge a pure layer split in fp16 at that residual loss and SNR).

As a policy in our env (`ChenPolicy` in baselines): the trained actor reads the same three numbers
from the slot's observable state, moves its split from the last boundary, transmits fp16 and keeps
every unit of the boundary layer on the cloud (a pure layer split).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from gymnax.environments import environment, spaces

from splitrl.agents.config import PPOConfig
from splitrl.env.cost import request_cost
from splitrl.env.split_env import SplitEnv
from splitrl.env.types import Action, EnvParams, EnvState


# ----------------------------------------------------------------------------- features
def chen_features(env_params: EnvParams, state: EnvState, split, n_layers: int) -> jax.Array:
    """Their state (noise, fading scale, split) from our env's observable state."""
    noise = env_params.channel.noise_on * (state.snr_db - 20.0) / 10.0
    return jnp.stack([noise, state.log_sigma_h, split / n_layers]).astype(jnp.float32)


def interior_splits(env_params: EnvParams, n_layers: int) -> tuple[int, int]:
    """(lowest, highest) allowed split in 1..L-1 (their split points are between layers)."""
    allowed = np.flatnonzero(np.asarray(env_params.costs.boundary_mask)[1:n_layers]) + 1
    if len(allowed) == 0:
        return 0, 0
    return int(allowed.min()), int(allowed.max())


def move_split(env_params: EnvParams, split, delta, lo: int, hi: int):
    """split + delta within [lo, hi], dropping to the largest allowed boundary <= it."""
    mask = env_params.costs.boundary_mask
    idx = jnp.arange(mask.shape[0])
    target = jnp.clip(split + delta, lo, hi)
    ok = mask & (idx <= target) & (idx >= lo)
    return jnp.where(ok.any(), jnp.max(jnp.where(ok, idx, -1)), lo).astype(jnp.int32)


# ----------------------------------------------------------------------------- the surrogate
class Surrogate(nn.Module):
    """MLP (noise, fading, split) -> log(1 + ΔPPL) (their reward model; log scale because ΔPPL under
    heavy loss is orders of magnitude above its typical values). `ppl(params, x)` is ΔPPL."""
    hidden: tuple[int, ...] = (64, 64)

    @nn.compact
    def __call__(self, x):
        for w in self.hidden:
            x = nn.relu(nn.Dense(w)(x))
        return nn.Dense(1)(x)[..., 0]


def surrogate_ppl(params, x):
    return jnp.expm1(jnp.maximum(Surrogate().apply(params, x), 0.0))


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
    loss = 1.0 - jnp.exp(-p.h_th**2 / (2 * jnp.exp(log_sigma) ** 2))
    U = env.n_units
    dppl = jax.vmap(lambda bb, sn, lp: request_cost(env_params, bb, 0, jnp.zeros(U), 256.0, 32.0, 1e9, p.rtt_mean_s,
                                                    lp, sn, 0.0)["delta_ppl"])(b, snr, loss)
    x = jnp.stack([p.noise_on * (snr - 20.0) / 10.0, log_sigma, b / env.n_layers], -1)
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


# ----------------------------------------------------------------------------- their MDP
@struct.dataclass
class ChenParams:
    inner: EnvParams
    surrogate: Any
    lam: jax.Array                   # weight of the UE compute cost
    max_steps_in_episode: jax.Array  # 5 in their paper


@struct.dataclass
class ChenState:
    inner: EnvState
    split: jax.Array                 # i32
    time: jax.Array                  # i32


class ChenEnv(environment.Environment[ChenState, ChenParams]):
    """Their MDP (module docstring) over our env's channel."""

    def __init__(self, env: SplitEnv, lo: int, hi: int):
        self.env, self.lo, self.hi = env, lo, hi

    def __hash__(self):
        return hash((ChenEnv, self.env, self.lo, self.hi))

    def __eq__(self, other):
        return isinstance(other, ChenEnv) and (self.env, self.lo, self.hi) == (other.env, other.lo, other.hi)

    def _obs(self, state: ChenState, params: ChenParams):
        return chen_features(params.inner, state.inner, state.split, self.env.n_layers)

    def reset_env(self, key, params: ChenParams):
        k_inner, k_split = jax.random.split(key)
        _, inner = self.env.reset_env(k_inner, params.inner)
        split = move_split(params.inner, jax.random.randint(k_split, (), self.lo, self.hi + 1), 0, self.lo, self.hi)
        state = ChenState(inner=inner, split=split, time=jnp.int32(0))
        return self._obs(state, params), state

    def step_env(self, key, state: ChenState, action, params: ChenParams):
        split = move_split(params.inner, state.split, action - 1, self.lo, self.hi)
        U = self.env.n_units
        _, inner, _, _, _ = self.env.step_env(key, state.inner, Action(split, jnp.int32(0), jnp.zeros(U, jnp.int32)),
                                              params.inner)
        new = ChenState(inner=inner, split=split, time=state.time + 1)
        x = chen_features(params.inner, inner, split, self.env.n_layers)
        ppl = surrogate_ppl(params.surrogate, x)
        reward = -(ppl / params.inner.reward.acc_ref + params.lam * split / self.env.n_layers)
        return self._obs(new, params), new, reward.astype(jnp.float32), jnp.bool_(False), {"ppl_surrogate": ppl}

    def action_space(self, params=None):
        return spaces.Discrete(3)

    def observation_space(self, params=None):
        return spaces.Box(-10.0, 10.0, (3,), jnp.float32)

    @property
    def num_actions(self) -> int:
        return 3


def chen_ppo_config(num_envs: int = 64, total_timesteps: int = 64_000, hidden=(64, 64)) -> PPOConfig:
    """Their PPO settings: lr 3e-4, γ 0.99, clip 0.2, GAE λ 0.95, 5 steps per episode (one rollout
    of 5 steps per env per update)."""
    return PPOConfig(name="chen_ppo", policy="flat", env="split", gymnax_id="", num_envs=num_envs, num_steps=5,
                     total_timesteps=total_timesteps, update_epochs=4, num_minibatches=4, gamma=0.99, gae_lambda=0.95,
                     clip_eps=0.2, clip_value=True, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, lr=3e-4,
                     anneal_lr=True, normalize_advantages=True, hidden=tuple(hidden), critic="separate",
                     manager_lr_scale=1.0)


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
