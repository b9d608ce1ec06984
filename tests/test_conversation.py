"""Conversations in the split runtime (splitrl/runtime/conversation.py): each layer's KV cache stays where
it ran and moves when the plan changes between turns; the tokens equal an unsplit run of the whole chat,
whichever way the caches move, and the choice is the simulator's rule."""

from __future__ import annotations

import pytest
import torch

from splitrl.runtime import conversation as C
from splitrl.runtime.kv import KV
from tests.harness_tiny import CASES, tiny_split_model

TURNS = ((5, 17, 33, 2, 9, 100, 7, 64), (11, 12, 13), (40, 41, 42, 43, 44), (3,), (90, 91))


@pytest.fixture(scope="module")
def sm():
    return tiny_split_model()


def unsplit(sm, turns, n):
    """transformers' own greedy generate over the whole history at every turn (no cache kept)."""
    history, answers = [], []
    for new in turns:
        history += list(new)
        ids = torch.tensor([history])
        out = sm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)
        answers.append(out[0, len(history):].tolist())
        history += answers[-1]
    return answers


def plan(sm, name, fmt="fp16"):
    b, units = CASES[name]
    return sm.plan(b, fmt, units)


def test_a_unit_cache_moves_out_and_back():
    kv = KV()
    k, v = torch.randn(1, 4, 5, 3), torch.randn(1, 4, 5, 3)
    kv.append(k, v, (0, 1))                          # 2 heads per unit
    k1, v1 = kv.take((0,))
    assert kv.units == (1,) and torch.equal(k1, k[:, :2]) and torch.equal(kv.v, v[:, 2:])
    kv.put((0,), k1, v1)
    assert kv.units == (0, 1) and torch.equal(kv.k, k) and torch.equal(kv.v, v)
    with pytest.raises(ValueError, match="move the cache first"):
        kv.append(k[:, :2], v[:, :2], (1,))
    with pytest.raises(ValueError, match="not in this cache"):
        kv.take((2,))


def test_moves_follow_the_split(sm):
    whole = C.moves(plan(sm, "edge_only"), plan(sm, "cloud_only"))
    assert [(m.layer, m.units, m.to_edge) for m in whole] == [(layer, (0, 1), False) for layer in range(3)]
    part = C.moves(plan(sm, "layer_split_only"), plan(sm, "attn_mixed"))      # b 2 -> 1 with unit 0 of layer 1 kept
    assert [(m.layer, m.units, m.to_edge) for m in part] == [(1, (1,), False)]
    assert C.split_point(plan(sm, "attn_mixed")) == 1.5
    assert C.moves(plan(sm, "attn_mixed"), plan(sm, "attn_mixed_ffn_down"))[0].to_edge is False


PLANS = ("edge_only", "attn_mixed", "cloud_only", "whole_layer_on_edge", "edge_only")


@pytest.mark.parametrize("force", ["kv", "recompute", "auto"])
def test_a_chat_under_a_changing_plan_gives_the_unsplit_tokens(sm, force):
    want = unsplit(sm, TURNS, 4)
    # a slow link and a fast cloud: moving 1.5 or 2 layers is cheaper recomputed, moving 1 is not
    chat = C.LocalConversation(sm, C.Prices.of(sm, 1e-3, 1e-9), force=force, bw=1e4)
    got = [chat.turn(new, plan(sm, name), 4) for new, name in zip(TURNS, PLANS, strict=True)]
    assert got == want
    assert {c.how for c in chat.choices} == ({"kv", "recompute"} if force == "auto" else {force})
    assert all(c.nbytes > 0 for c in chat.choices)       # every turn here moves something


def test_recompute_is_chosen_when_it_is_cheaper(sm):
    ms = C.moves(plan(sm, "edge_only"), plan(sm, "cloud_only"))
    prices = C.Prices.of(sm, edge_layer_s=1e-3, cloud_layer_s=1e-6)
    slow = C.choose(ms, 100, "int4", sm.d_model, sm.attn_units, prices, bw=1e5, rtt=0.05)
    fast = C.choose(ms, 100, "int4", sm.d_model, sm.attn_units, prices, bw=1e9, rtt=0.05)
    assert slow.how == "recompute" and fast.how == "kv"
    kv_bytes = 100 * prices.kv_bytes * 3
    assert fast.nbytes == kv_bytes and fast.seconds == pytest.approx(0.025 + kv_bytes / 1e9)


def test_the_runtime_choice_is_the_simulators_price():
    """`choose` against splitrl.env.sessions.migration on the shipped session scenario, loss-free."""
    jnp = pytest.importorskip("jax.numpy")
    from splitrl.env.cost import _lookup
    from splitrl.env.scenario import make
    from splitrl.env.sessions import migration
    from splitrl.env.tables import decode_model_row
    from splitrl.env.types import Conditions
    from splitrl.profiles.formats import TX_FORMATS
    from splitrl.runtime.split_model import Plan
    _, params = make("session_s23_3g_bus")
    c = params.costs
    L, A = c.layer_rows.shape[0] - 1, int(c.unit_is_attn.sum())
    U = c.unit_is_attn.shape[0]
    d = int(round(float(c.tx_bytes[0]) / 2))
    model = decode_model_row(_lookup(params, 0, jnp.float32(600.0), jnp.float32(650.0))[1])
    prices = C.Prices(float(params.session.kv_bytes), float(model.edge_all[0]) / L, float(model.cloud_all[0]) / L)
    for bw in (1e5, 1e6, 3e7):
        for (b_old, b_new, fmt) in ((L, 4, 2), (6, 12, 0), (0, L, 1), (10, 3, 2)):
            cond = Conditions(bw=jnp.float32(bw), rtt=jnp.float32(0.06), loss_p=jnp.float32(0.0),
                              snr_db=jnp.float32(20.0), cloud_load=jnp.float32(0.0), cloud_wait=jnp.float32(0.0),
                              connected=jnp.float32(1.0), reconnect=jnp.float32(0.0), ctx=jnp.float32(600.0),
                              kv_split=jnp.float32(b_old))
            env = migration(params, jnp.int32(b_new), jnp.int32(fmt), jnp.zeros(U), model, cond)
            old = Plan(b_old, "fp16", (0,) * U, L, A)
            new = Plan(b_new, TX_FORMATS[fmt], (0,) * U, L, A)
            got = C.choose(C.moves(old, new), 600, TX_FORMATS[fmt], d, A, prices, bw, 0.06)
            assert got.seconds == pytest.approx(float(env["time"]), rel=1e-4)
            assert got.nbytes == pytest.approx(float(env["up"] + env["down"]), rel=1e-4)
