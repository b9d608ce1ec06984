"""Parameter-shared HPPO on a fleet (splitrl/agents/ppo.py with a device axis): two guided seeds of two
updates in one compile on a tiny fleet, per-device GAE against a loop (`splitrl-train fleet=...` and the fleet
evaluation of its run: tests/test_fleet_eval.py). Tiny sizes: 4 devices, 2 fleets, 4 slots per update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splitrl.agents import guide as G
from splitrl.agents import make_policy, ppo
from splitrl.config import ConfigError
from splitrl.env.fleet import fixed_action
from splitrl.env.fleet_scenario import load_fleet_dict, make_fleet

from .test_agents import hparams, small_cfg

PEAK = "llama-2-7b_1xa100_peak"


@pytest.fixture(scope="module")
def tiny():
    data = load_fleet_dict(PEAK)[0] | {"n_devices": 4, "channel": {"cells": 2, "correlation": 0.5}}
    env, params = make_fleet(data)
    return env, params


def fleet_cfg(**over):
    return small_cfg(**({"num_envs": 2, "num_steps": 4, "total_timesteps": 2 * 4, "num_minibatches": 2,
                         "update_epochs": 1, "guide": "dpp", "guide_coef": 1.0, "guide_states": 8} | over))


def test_two_guided_seeds_in_one_compile_with_v_on_every_device(tiny):
    env, params = tiny
    cfg = fleet_cfg(total_timesteps=2 * 2 * 4)                     # 2 updates, the DPP guide on
    policy = make_policy(cfg, env, params)
    train = jax.jit(jax.vmap(ppo.make_train(cfg, env, params, policy, reward_v_field="device.reward.V")))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    hps = ppo.HParams(lr=jnp.array([3e-3, 3e-3]), ent_coef=jnp.array([0.01, 0.01]), reward_v=jnp.array([1.0, 4.0]))
    state, metrics = train(keys, hps)
    assert metrics["reward_mean"].shape == (2, 2) and state.running_return.shape == (2, 2, 4)   # [seeds, envs, N]
    assert bool(jnp.any(state.running_return != 0))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in metrics.values()), metrics
    assert bool(jnp.all(metrics["grad_norm"] > 0))                 # every update moved the policy
    # per-device fields averaged over the devices, fleet-level fields as they are, the guide's loss
    for key in ("env/latency", "env/response_time", "env/cloud_util", "env/fleet_objective", "guide_nll"):
        assert key in metrics, key
    first = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    assert any(not np.array_equal(x[0], x[1]) for x in first)     # two seeds, two policies
    # the traced V reaches every device: same slot, same placement, V = 4 adds 3·penalty to each objective
    p1, p4 = (ppo.env_params_with(params, hparams(reward_v=v), "device.reward.V") for v in (1.0, 4.0))
    assert p4.device.reward.V.shape == (4,) and bool(jnp.all(p4.device.reward.V == 4.0))
    _, s0 = env.reset(jax.random.PRNGKey(1), p1)
    info1, info4 = (env.step(jax.random.PRNGKey(2), s0, fixed_action(env, 0), p)[-1] for p in (p1, p4))
    np.testing.assert_allclose(info4["objective"] - info1["objective"], 3.0 * info1["penalty"], rtol=1e-4, atol=1e-6)


def test_per_device_gae_equals_a_loop_over_each_device():
    rng = np.random.default_rng(1)
    T, E, N, gamma, lam = 5, 2, 3, 0.9, 0.8
    r, v, nv = rng.normal(size=(3, T, E, N)).astype(np.float32)
    term = np.zeros((T, E, N), np.float32)
    term[2, 1, 0] = 1.0                                            # one device's episode ends
    done = term.copy()
    done[3, 0, :] = 1.0                                            # a fleet truncated: every device
    merged = [ppo.merge_agents(jnp.asarray(x)) for x in (r, v, nv, term, done)]
    adv, _ = ppo.gae(*merged, gamma, lam)
    adv = np.asarray(adv).reshape(T, E, N)
    for e in range(E):
        for n in range(N):
            running = 0.0
            for t in reversed(range(T)):
                delta = r[t, e, n] + gamma * (1 - term[t, e, n]) * nv[t, e, n] - v[t, e, n]
                running = delta + gamma * lam * (1 - done[t, e, n]) * running
                np.testing.assert_allclose(adv[t, e, n], running, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["greedy", "uniform"])
def test_train_time_evaluation_runs_on_a_fleet(tiny, mode):
    env, params = tiny
    cfg = fleet_cfg()
    policy = make_policy(cfg, env, params)
    state = ppo.make_init(cfg, env, params, policy)(jax.random.PRNGKey(0), hparams())
    out = ppo.evaluate_returns(policy, env, params, state.params, jax.random.PRNGKey(1), 2, 3, mode)
    # no episode ends in 3 slots: the return is 0 over 0 episodes; the metrics are the devices' mean
    assert int(out["episodes"]) == 0 and float(out["episode_return"]) == 0.0
    assert out["reward"].shape == () and np.isfinite(float(out["reward"]))
    assert out["latency"].shape == () and out["cloud_util"].shape == ()


def test_team_spirit_keeps_the_fleet_sum_and_moves_each_device_toward_the_mean():
    reward = jnp.asarray([[[-1.0, -3.0, -8.0, 0.0]], [[2.0, 2.0, 2.0, 2.0]]])       # [T, E, N]
    for tau in (0.0, 0.3, 1.0):
        mixed = np.asarray(ppo.team_reward(reward, tau))
        np.testing.assert_allclose(mixed.sum(-1), np.asarray(reward).sum(-1), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(ppo.team_reward(reward, 0.0)), np.asarray(reward))
    np.testing.assert_allclose(np.asarray(ppo.team_reward(reward, 1.0))[0, 0], [-3.0] * 4)
    np.testing.assert_allclose(np.asarray(ppo.team_reward(reward, 0.5))[0, 0], [-2.0, -3.0, -5.5, -1.5])


def test_team_spirit_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="team_spirit = 1.5: must be in"):
        fleet_cfg(team_spirit=1.5).check("agent")


def test_the_congestion_guide_keeps_work_local_where_the_published_queue_is_long(tiny):
    env, params = tiny
    obs, s = env.reset(jax.random.PRNGKey(3), params)
    n = env.n_devices
    states = jax.tree.map(lambda x: x[None], s)                    # one fleet: [M=1, N]
    key = jax.random.PRNGKey(4)

    def boundaries(kappa, wait_s):
        # two requests waiting on each device (a fresh fleet has none to serve, so nothing to price)
        st = states.replace(device=states.device.replace(cloud_wait_est=jnp.full((1, n), wait_s),
                                                         backlog=jnp.full((1, n), 2.0)))
        label = G.make_labeller(fleet_cfg(guide_states=n, guide_congestion=kappa), env, params)
        return np.asarray(label(params, obs, st, key).action.boundary)

    myopic = boundaries(0.0, 2.0)
    congested = boundaries(1e4, 2.0)
    assert congested.sum() > myopic.sum(), (myopic, congested)   # layers kept on the edge, behind a queue
    with pytest.raises(ConfigError, match="guide_congestion = -1"):
        fleet_cfg(guide_congestion=-1.0).check("agent")


def test_the_congestion_guide_is_refused_on_one_device():
    from splitrl.env.scenario import make
    env, params = make("default")
    with pytest.raises(ValueError, match="guide_congestion = 100.0: congestion DPP labels a fleet"):
        G.make_labeller(small_cfg(guide="dpp", guide_congestion=100.0), env, params)
