"""Agents: the hierarchical distribution against brute force, masks, GAE against a loop, one update,
vmapped hyperparameters, learning on a fake env with a known optimum."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splitrl.agents import distributions as D
from splitrl.agents import make_policy, ppo
from splitrl.agents.config import PPOConfig
from splitrl.agents.networks import FlatPolicy, HierarchicalNet, HierarchicalPolicy

from . import fakes


def small_cfg(**over) -> PPOConfig:
    base = dict(name="hppo", policy="hierarchical", env="split", gymnax_id="", num_envs=8, num_steps=8,
                total_timesteps=8 * 8 * 4, update_epochs=2, num_minibatches=2, gamma=0.9, gae_lambda=0.95,
                clip_eps=0.2, clip_value=True, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, lr=3e-3,
                anneal_lr=True, normalize_advantages=True, hidden=(32, 32), critic="separate", manager_lr_scale=1.0,
                guide="none", guide_coef=0.0, guide_final=0.0, guide_anneal=1.0, guide_states=1,
                team_spirit=0.0, guide_congestion=0.0, pretrain_rounds=0, pretrain_states=1, pretrain_steps=1,
                pretrain_lr=1e-3)
    return PPOConfig(**(base | over))


def hparams(lr=3e-3, ent_coef=0.01, reward_v=1.0):
    return ppo.HParams(lr=jnp.float32(lr), ent_coef=jnp.float32(ent_coef), reward_v=jnp.float32(reward_v))


def tiny_obs(key, env):
    """An observation of the fake env with some boundaries and formats masked out."""
    obs, _ = env.reset(key, env.default_params)
    return obs.replace(boundary_mask=jnp.array([True, False, True]),
                       format_mask=jnp.array([False, True, True]))


def test_log_prob_and_entropy_match_brute_force_enumeration():
    env = fakes.FakeSplitEnv(num_layers=2, num_units=2)
    policy = HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, (16,), "separate")
    obs = tiny_obs(jax.random.PRNGKey(1), env)
    params = policy.init(jax.random.PRNGKey(2), obs)
    # scale the heads up so the distribution is far from uniform
    params = jax.tree.map(lambda x: x * 30.0 if x.ndim == 2 and x.shape[1] <= 3 else x, params)
    # raw (unmasked) manager logits: the torso only sees the features
    all_ok = obs.replace(boundary_mask=jnp.ones(3, bool), format_mask=jnp.ones(3, bool))
    raw_b, raw_f, _ = policy.net.apply(params, all_ok, method=HierarchicalNet.manager)
    p_b = np.where(obs.boundary_mask, np.exp(raw_b), 0.0)
    p_b /= p_b.sum()
    p_f = np.where(obs.format_mask, np.exp(raw_f), 0.0)
    p_f /= p_f.sum()
    joint, total, brute_entropy, expected_entropy = {}, 0.0, 0.0, 0.0
    for b, f in itertools.product(range(3), range(3)):
        gate, two_way = (np.asarray(x) for x in policy.net.apply(params, obs, b, f, method=HierarchicalNet.worker))
        p_split = float(jax.nn.sigmoid(gate[1] - gate[0])) if obs.unit_mask[b].any() else 0.0
        p_edge = np.where(obs.unit_mask[b], np.asarray(jax.nn.sigmoid(two_way[:, 1] - two_way[:, 0])), 0.0)
        joint[(b, f, 0, (0, 0))] = p_b[b] * p_f[f] * (1 - p_split)      # whole layers: every unit on the cloud
        for units in itertools.product((0, 1), repeat=2):
            p_u = np.prod([p_edge[i] if u else 1 - p_edge[i] for i, u in enumerate(units)])
            joint[(b, f, 1, units)] = p_b[b] * p_f[f] * p_split * p_u
        a = D.HierarchicalAction(boundary=jnp.int32(b), fmt=jnp.int32(f), split=jnp.int32(0), units=jnp.zeros(2, jnp.int32))
        expected_entropy += p_b[b] * p_f[f] * float(policy.evaluate(params, obs, a)[1])
    for (b, f, g, units), p in joint.items():
        action = D.HierarchicalAction(boundary=jnp.int32(b), fmt=jnp.int32(f), split=jnp.int32(g),
                                      units=jnp.array(units, jnp.int32))
        log_p, _, _ = policy.evaluate(params, obs, action)
        assert np.isfinite(float(log_p))
        np.testing.assert_allclose(np.exp(float(log_p)), p, atol=1e-6)
        total += np.exp(float(log_p))
        brute_entropy -= p * np.log(p) if p > 0 else 0.0
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    # the sampled-(b, f) entropy is the joint entropy in expectation over the manager's choice
    np.testing.assert_allclose(expected_entropy, brute_entropy, rtol=1e-4, atol=1e-5)


def test_masked_actions_are_never_sampled():
    env = fakes.FakeSplitEnv(num_layers=3, num_units=4)
    key = jax.random.PRNGKey(0)
    obs_keys = jax.random.split(key, 512)
    obs, _ = jax.vmap(env.reset, (0, None))(obs_keys, env.default_params)
    hier = HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, (16,), "shared")
    params = hier.init(key, jax.tree.map(lambda x: x[0], obs))
    for sampler in (lambda o, k: hier.sample(params, o, k)[0], hier.sample_uniform):
        action = jax.vmap(sampler)(obs, jax.random.split(jax.random.PRNGKey(3), 512))
        rows = jnp.arange(512)
        assert bool(jnp.all(obs.boundary_mask[rows, action.boundary]))
        assert bool(jnp.all(obs.format_mask[rows, action.fmt]))
        allowed = obs.unit_mask[rows, action.boundary]
        assert bool(jnp.all(~allowed <= (action.units == 0)))      # not allowed -> cloud
        assert bool(jnp.any(action.units == 1))                     # the edge does get used
        assert bool(jnp.all((action.split == 0) <= jnp.all(action.units == 0, axis=-1)))   # whole -> all cloud
        assert bool(jnp.all((action.split == 1) <= jnp.any(allowed, axis=-1)))           # split needs an edge unit
    flat_env = fakes.FlatSplitEnv(env, env.default_params)
    fobs, _ = jax.vmap(flat_env.reset, (0, None))(obs_keys, env.default_params)
    flat = FlatPolicy(flat_env.num_actions, (16,), "separate")
    fparams = flat.init(key, jax.tree.map(lambda x: x[0], fobs))
    a = jax.vmap(lambda o, k: flat.sample(fparams, o, k)[0])(fobs, jax.random.split(key, 512))
    assert bool(jnp.all(fobs.action_mask[jnp.arange(512), a]))


def test_mask_logits_stays_finite_even_if_everything_is_masked():
    logits = jnp.array([0.3, -1.0, 2.0])
    out = D.mask_logits(logits, jnp.zeros(3, bool))
    np.testing.assert_array_equal(out, logits)
    dist = D.masked_categorical(logits, jnp.array([True, False, False]))
    assert np.isfinite(float(dist.entropy())) and float(dist.probs[1]) == 0.0


@pytest.mark.parametrize("k", [2, 3])
def test_short_categoricals_match_distrax_with_gradients(k):
    import distrax
    logits = jnp.asarray(np.random.default_rng(k).normal(size=(64, k)) * 3, jnp.float32)
    logits = logits.at[:8, -1].set(D.MASKED_LOGIT)   # masked entries: probability 0, entropy finite
    value = jnp.arange(64) % k

    def ours(x):
        return D.short_log_prob(x, value).sum() + D.short_entropy(x).sum()

    def reference(x):
        dist = distrax.Categorical(logits=x)
        return dist.log_prob(value).sum() + dist.entropy().sum()

    np.testing.assert_allclose(ours(logits), reference(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits), rtol=1e-5, atol=1e-6)


def test_gae_matches_a_plain_loop_with_truncation_bootstrap():
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 7, 3, 0.9, 0.8
    r, v, nv = rng.normal(size=(3, T, N)).astype(np.float32)
    term = (rng.random((T, N)) < 0.15).astype(np.float32)
    trunc = (rng.random((T, N)) < 0.15).astype(np.float32)
    done = np.maximum(term, trunc)
    adv, ret = ppo.gae(jnp.array(r), jnp.array(v), jnp.array(nv), jnp.array(term), jnp.array(done), gamma, lam)
    expected = np.zeros((T, N), np.float32)
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            delta = r[t, n] + gamma * (1 - term[t, n]) * nv[t, n] - v[t, n]
            running = delta + gamma * lam * (1 - done[t, n]) * running
            expected[t, n] = running
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, expected + v, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy_kind", ["hierarchical", "flat"])
def test_one_jitted_update_changes_params_and_keeps_them_finite(policy_kind):
    env, env_params = fakes.make()
    if policy_kind == "flat":
        env = fakes.FlatSplitEnv(env, env_params)
    cfg = small_cfg(policy=policy_kind, env="split" if policy_kind == "hierarchical" else "split_flat")
    policy = make_policy(cfg, env, env_params)
    state = ppo.make_init(cfg, env, env_params, policy)(jax.random.PRNGKey(0), hparams())
    update = jax.jit(ppo.make_update(cfg, env, env_params, policy))
    new_state, metrics = update(state, hparams())
    before, after = jax.tree.leaves(state.params), jax.tree.leaves(new_state.params)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in after)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    for key in ("approx_kl", "clip_fraction", "explained_variance", "entropy", "value_loss", "policy_loss"):
        assert key in metrics
    assert int(new_state.update_step) == 1


def test_vmap_over_seeds_and_traced_hyperparameters_in_one_compile():
    env, env_params = fakes.make()
    cfg = small_cfg(total_timesteps=8 * 8 * 2)
    policy = make_policy(cfg, env, env_params)
    train = jax.jit(jax.vmap(ppo.make_train(cfg, env, env_params, policy, reward_v_field="lyapunov_v")))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    hps = ppo.HParams(lr=jnp.array([0.0, 3e-3, 3e-3]), ent_coef=jnp.array([0.0, 0.01, 0.1]),
                      reward_v=jnp.array([1.0, 1.0, 2.0]))
    state, metrics = train(keys, hps)
    assert metrics["reward_mean"].shape == (3, 2)
    init = jax.vmap(ppo.make_init(cfg, env, env_params, policy, "lyapunov_v"))(keys, hps)
    for p0, p1 in zip(jax.tree.leaves(init.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(p0[0], p1[0])        # lr = 0: unchanged
        assert not np.array_equal(p0[1], p1[1])
    # V scales the fake's reward: member 2 (V = 2) earns about twice the reward of member 1 early on
    assert float(metrics["reward_mean"][2, 0]) > 1.5 * float(metrics["reward_mean"][1, 0])


def test_hierarchical_ppo_learns_the_fake_optimum():
    env, env_params = fakes.make()
    cfg = small_cfg(num_envs=16, num_steps=16, total_timesteps=16 * 16 * 60, update_epochs=4, num_minibatches=4)
    policy = make_policy(cfg, env, env_params)
    state, metrics = jax.jit(ppo.make_train(cfg, env, env_params, policy))(jax.random.PRNGKey(0), hparams())
    random_policy = ppo.evaluate_returns(policy, env, env_params, None, jax.random.PRNGKey(1), 64, 16, "uniform")
    greedy = ppo.evaluate_returns(policy, env, env_params, state.params, jax.random.PRNGKey(1), 64, 16, "greedy")
    assert float(random_policy["reward"]) < 1.3
    assert float(metrics["reward_mean"][-5:].mean()) > 1.9
    assert float(greedy["reward"]) > 1.95     # the optimum is 2.0 a slot


@pytest.mark.parametrize("shape", [(17, 64), (64, 64), (64, 3), (64, 1), (5, 200)])
def test_orthogonal_init_is_jax_orthogonal_without_lapack(shape):
    """Same matrix as jax's QR-based orthogonal init, and no LAPACK call even under vmap (jaxlib 0.10.2's
    batched QR deadlocks at random on 2 CPU cores: see splitrl.agents.networks.orthogonal)."""
    from splitrl.agents.networks import orthogonal

    key = jax.random.PRNGKey(3)
    ours = orthogonal(1.4)(key, shape)
    np.testing.assert_allclose(ours, jax.nn.initializers.orthogonal(1.4)(key, shape), atol=1e-5)
    small = min(shape)
    gram = ours.T @ ours if shape[0] >= shape[1] else ours @ ours.T
    np.testing.assert_allclose(gram, 1.96 * np.eye(small), atol=1e-5)


def test_vmapped_policy_init_has_no_linear_algebra_custom_call():
    env = fakes.FakeSplitEnv(num_layers=2, num_units=2)
    policy = HierarchicalPolicy(env.num_boundaries, env.num_formats, env.num_units, (16, 16), "separate")
    obs = tiny_obs(jax.random.PRNGKey(1), env)
    hlo = jax.jit(jax.vmap(lambda k: policy.init(k, obs))).lower(jax.random.split(jax.random.PRNGKey(0), 2)).as_text()
    assert "custom_call" not in hlo and "lapack" not in hlo.lower()
