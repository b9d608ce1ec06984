"""Conversations whose KV cache stays where it ran (splitrl/env/cost.py `migration`): what moving the
split between turns costs, how the context grows, and that a scenario without sessions is unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splitrl.env import features as F
from splitrl.env.cost import action_cost, transfer_time
from splitrl.env.scenario import make
from splitrl.env.scenario_sections import ScenarioError
from splitrl.env.slot import estimated_conditions
from splitrl.env.types import Action

SESSION = "session_s23_3g_bus"


@pytest.fixture(scope="module")
def env_params():
    env, params = make(SESSION)
    state = env.reset(jax.random.PRNGKey(0), params)[1]
    cond = estimated_conditions(state, params).replace(connected=jnp.float32(1.0), bw=jnp.float32(2e6),
                                                       rtt=jnp.float32(0.05), loss_p=jnp.float32(0.0))
    return env, params, cond


def _cost(env, params, cond, b, ctx, kv_split, fmt=0):
    units = jnp.zeros(env.n_units, jnp.int32)
    return action_cost(params, jnp.int32(b), jnp.int32(fmt), units, 64.0, 32.0,
                       cond.replace(ctx=jnp.float32(ctx), kv_split=jnp.float32(kv_split)))


def test_a_new_conversation_or_an_unmoved_split_migrates_nothing(env_params):
    env, params, cond = env_params
    for b, ctx, kv in ((10, 0.0, 30.0), (10, 500.0, 10.0), (0, 500.0, 0.0)):
        m = _cost(env, params, cond, b, ctx, kv)
        assert float(m["migration_s"]) == 0.0 and float(m["migration_bytes"]) == 0.0


def test_moving_the_split_moves_the_cheaper_of_the_kv_cache_and_a_recompute(env_params):
    env, params, cond = env_params
    ctx, moved = 500.0, 6
    m = _cost(env, params, cond, 10, ctx, 10 + moved)            # six layers' cache goes up to the cloud
    kv_bytes = ctx * float(params.session.kv_bytes) * moved
    hid_bytes = ctx * float(params.costs.tx_bytes[0])
    wire = lambda n: float(transfer_time(n, cond.bw, cond.rtt, cond.loss_p, params.channel.packet_bytes,  # noqa: E731
                                         params.channel.max_retx))
    # the hidden state is smaller than six layers' K and V, and recomputing adds time on top of sending it
    assert hid_bytes < kv_bytes
    assert wire(hid_bytes) * (1 - 1e-5) <= float(m["migration_s"]) <= wire(kv_bytes) * (1 + 1e-5)
    assert float(m["migration_bytes"]) in (pytest.approx(kv_bytes, rel=1e-5), pytest.approx(hid_bytes, rel=1e-5))
    # the request pays for it: the same request without a cache to move is faster by the migration
    fresh = _cost(env, params, cond, 10, ctx, 10.0)
    np.testing.assert_allclose(float(m["latency"]) - float(fresh["latency"]), float(m["migration_s"]), rtol=1e-4)
    # a longer conversation costs more to move
    assert float(_cost(env, params, cond, 10, 2 * ctx, 10 + moved)["migration_s"]) > float(m["migration_s"])


def test_kv_bytes_are_the_models_k_and_v_per_layer_in_fp16():
    from splitrl.profiles import load_model
    _, params = make(SESSION)
    gpt = load_model("gpt2-xl")
    assert float(params.session.kv_bytes) == 2 * gpt.n_kv_heads * gpt.head_dim * 2
    assert float(params.session.max_ctx) == gpt.max_context


def test_conversations_grow_then_start_afresh():
    env, params = make(SESSION)
    assert env.sessions and env.obs_dim == len(F.FEATURES) + 2 and env.N_STEP_DRAWS == 18
    action = Action(boundary=jnp.int32(0), fmt=jnp.int32(0), units=jnp.zeros(env.n_units, jnp.int32))

    def step(state, k):
        _, new, _, _, info = env.step_env(k, state, action, params)
        return new, (state.ctx_len, state.prompt_len + state.output_len, new.ctx_len, info["ctx_len"])

    state = env.reset(jax.random.PRNGKey(3), params)[1]
    _, (ctx, turn, nxt, seen) = jax.lax.scan(step, state, jax.random.split(jax.random.PRNGKey(4), 400))
    ctx, turn, nxt, seen = map(np.asarray, (ctx, turn, nxt, seen))
    np.testing.assert_array_equal(seen, ctx)                             # info reports the priced turn's cache
    grew = nxt > 0
    np.testing.assert_allclose(nxt[grew], (ctx + turn)[grew])            # a next turn caches this one
    assert (nxt <= float(params.session.max_ctx)).all()
    # geometric conversations: P(next turn) = 1 - 1/turns_mean, less those cut by the context window
    p = float(params.session.continue_p)
    assert 0.5 * p < grew.mean() <= p + 0.05


def test_a_bad_sessions_section_names_the_field():
    from splitrl.env.scenario import load_scenario_dict
    data, _ = load_scenario_dict(SESSION)
    with pytest.raises(ScenarioError, match=r"sessions\.turns_mean"):
        make(data | {"sessions": {"enabled": True, "turns_mean": 0.5}})
    with pytest.raises(ScenarioError, match=r"sessions\.think_s"):
        make(data | {"sessions": {"enabled": True, "turns_mean": 3.0, "think_s": 5.0}})
    env, params = make(data | {"sessions": {"enabled": False, "turns_mean": 3.0}})
    assert not env.sessions and float(params.session.continue_p) == 0.0


def test_an_exported_conversation_policy_reads_the_chats_cache(tmp_path):
    """The ONNX metadata carries ctx_len and kv_split with the scenario's normalisation; the runtime builds
    the env's features from raw quantities, takes them from the chat, and refuses without them."""
    from splitrl.runtime.policy import PolicyMismatch
    from tests.test_harness_export import exported_policy_with_the_envs_features
    pol, env, ep = exported_policy_with_the_envs_features(tmp_path, SESSION)
    names = [f.name for f in env.features]
    feats = pol.observe(1.25e6, 0.04, 64, 32, ctx_len=512.0, kv_split=12.5)
    assert feats[names.index("ctx_len")] == pytest.approx(512.0 / float(ep.session.max_ctx))
    assert feats[names.index("kv_split")] == pytest.approx(12.5 / (ep.costs.layer_rows.shape[0] - 1))
    with pytest.raises(PolicyMismatch, match="conversations"):
        pol.observe(1.25e6, 0.04, 64, 32)


def test_the_edge_memory_masks_follow_a_conversations_cache():
    """LLaMA-2-7B on a Galaxy S23: the deeper splits that fit a short request stop fitting once a long
    conversation's cache is on the edge; the observation shows it and the env projects onto what fits."""
    from splitrl.env.scenario import load_scenario_dict
    from splitrl.env.sessions import params_at
    data, _ = load_scenario_dict(SESSION)
    env, params = make(data | {"model": "llama-2-7b", "context": 256, "id": "session-s23-7b-test"})
    s = params.session
    assert s.boundary_masks.shape == (s.mask_ctx.shape[0], env.num_boundaries)
    fits = np.asarray(s.boundary_masks).sum(1)
    assert (np.diff(fits) <= 0).all() and fits[0] > fits[-1]          # more cache, fewer splits fit
    state = env.reset(jax.random.PRNGKey(0), params)[1]
    short = state.replace(ctx_len=jnp.float32(0.0), prompt_len=jnp.float32(64.0), output_len=jnp.float32(32.0))
    long = short.replace(ctx_len=float(s.max_ctx) - 200.0)
    m_short = np.asarray(env.get_obs(short, params).boundary_mask)
    m_long = np.asarray(env.get_obs(long, params).boundary_mask)
    np.testing.assert_array_equal(m_short, np.asarray(params_at(params, short).costs.boundary_mask))
    assert m_long.sum() < m_short.sum() and not (m_long & ~m_short).any()
    deepest = int(np.flatnonzero(m_short)[-1])
    assert not m_long[deepest]
    action = Action(boundary=jnp.int32(deepest), fmt=jnp.int32(0), units=jnp.zeros(env.n_units, jnp.int32))
    info = env.step_env(jax.random.PRNGKey(1), long.replace(kv_split=jnp.float32(deepest)), action, params)[4]
    assert m_long[int(info["boundary"])] and int(info["boundary"]) < deepest
