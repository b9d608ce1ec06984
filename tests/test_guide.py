"""DPP-guided PPO (splitrl/agents/guide.py): the labels are the myopic DPP controller's decisions, the
weight follows its schedule, and the behaviour-cloning term moves the policy onto the labels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splitrl.agents import guide as G
from splitrl.agents import make_policy, ppo
from splitrl.env import make
from splitrl.env.cost import project_action
from splitrl.env.dpp import candidate_actions, candidate_costs, dpp_objective
from splitrl.env.slot import estimated_conditions

from .test_agents import hparams, small_cfg


@pytest.fixture(scope="module")
def outage():
    return make("outage_heavy")


def _states(env, params, n=24):
    """Reset states, then a few random steps so links are down, queues non-empty and requests differ."""
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    obs, states = jax.jit(jax.vmap(env.reset_env, (0, None)))(keys, params)
    cand = candidate_actions(env, params, layer_only=True)
    step = jax.jit(jax.vmap(env.step_env, (0, 0, 0, None)))   # one compile, not op-by-op eager dispatch
    for t in range(6):
        k = jax.random.split(jax.random.PRNGKey(100 + t), n)
        pick = jax.random.randint(jax.random.PRNGKey(200 + t), (n,), 0, cand.boundary.shape[0])
        a = jax.tree.map(lambda x, pick=pick: x[pick], cand)
        obs, states, *_ = step(k, states, a, params)
    return obs, states


def test_labels_are_the_myopic_controllers_least_objective(outage):
    """Each label is the whole-layer placement of least one-slot objective at the observed estimates,
    checked by scoring every candidate by hand; and it is feasible (projected)."""
    env, params = outage
    obs, states = _states(env, params)
    cfg = small_cfg(guide="dpp", guide_coef=1.0, guide_states=24)
    batch = jax.jit(G.make_labeller(cfg, env, params))(params, obs, states, jax.random.PRNGKey(0))   # as in training
    cand = candidate_actions(env, params, layer_only=True)
    # the labeller subsamples states (here all 24, in some order): match labels to states by observation
    order = [int(np.argmin(np.abs(np.asarray(obs.features) - np.asarray(f)).sum(1))) for f in batch.obs.features]
    assert sorted(order) == list(range(24))

    def by_hand(s):            # score every candidate of one state, take the least, project it
        m = candidate_costs(params, cand, s.prompt_len, s.output_len, estimated_conditions(s, params))
        best = jnp.argmin(dpp_objective(params, s, m, params.workload.arrival_rate * params.slot_s))
        return project_action(params, cand.boundary[best], cand.fmt[best], cand.units[best])
    b, f, u = (np.asarray(x) for x in jax.jit(jax.vmap(by_hand))(states))   # one compile, not 24 eager passes
    for row, i in enumerate(order):
        assert int(batch.action.boundary[row]) == int(b[i])
        assert int(batch.action.fmt[row]) == int(f[i])
        np.testing.assert_array_equal(np.asarray(batch.action.units[row]), u[i].astype(np.int32))
    # in outage_heavy the controller's choice depends on the link: both cloud-only and edge-only occur
    assert {0, env.n_layers} <= set(np.asarray(batch.action.boundary).tolist())


def test_the_weight_decays_over_guide_anneal_then_stays():
    cfg = small_cfg(guide="dpp", guide_coef=2.0, guide_final=0.5, guide_anneal=0.5, total_timesteps=8 * 8 * 11)
    assert cfg.num_updates == 11
    beta = [float(G.coefficient(cfg, jnp.float32(t))) for t in range(11)]
    assert beta[0] == pytest.approx(2.0) and beta[5] == pytest.approx(0.5) and beta[10] == pytest.approx(0.5)
    assert beta[2] == pytest.approx(2.0 - 1.5 * 2 / 5)


def test_the_guide_labels_nothing_once_its_weight_is_0(outage):
    """β = 0 (the default schedule's second half): the labelling is skipped (zeros instead); while β > 0 the
    labels are the labeller's. (That the guide's fit then reads 0 is in the hppo case of
    tests/golden_train.json, whose last two updates have β = 0.)"""
    env, params = outage
    cfg = small_cfg(guide="dpp", guide_coef=1.0, guide_final=0.0, guide_anneal=0.5, guide_states=16,
                    total_timesteps=8 * 8 * 4)
    label = G.make_labeller(cfg, env, params)
    obs, states = jax.vmap(env.reset, (0, None))(jax.random.split(jax.random.PRNGKey(1), 32), params)
    args = (params, obs, states, jax.random.PRNGKey(2))
    labelled, skipped = (jax.jit(G.label_while_active, static_argnums=0)(label, beta, *args) for beta in (0.5, 0.0))
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(labelled), jax.tree.leaves(jax.jit(label)(*args)), strict=True))
    assert all(not np.any(x) for x in jax.tree.leaves(skipped))


def test_guided_updates_move_the_policy_onto_the_labels(outage):
    """A strong guide weight pulls the policy onto the controller's decisions within a few updates: the
    labels' negative log-likelihood falls by more than half and the greedy boundary is the controller's
    on nearly every labelled state."""
    env, params = outage
    cfg = small_cfg(guide="dpp", guide_coef=5.0, guide_final=5.0, guide_states=64, num_envs=16, num_steps=8,
                    total_timesteps=16 * 8 * 40, update_epochs=4, num_minibatches=2, ent_coef=0.0)
    policy = make_policy(cfg, env, params)
    _, metrics = jax.jit(ppo.make_train(cfg, env, params, policy))(jax.random.PRNGKey(0), hparams(lr=3e-3, ent_coef=0.0))
    agree, nll = np.asarray(metrics["guide_agree"]), np.asarray(metrics["guide_nll"])
    print("agree", agree.round(2), "nll", nll.round(2))
    assert agree[-5:].mean() > 0.95
    assert nll[-5:].mean() < 0.5 * nll[0]
