"""Conversations over the wire (splitrl/runtime/chat.py): the cloud keeps a chat's caches between turns,
the caches move when the plan changes (K/V or recompute, as the simulator's rule chooses), and the
tokens equal an unsplit run of the whole chat, also when the cloud is restarted mid-conversation."""

from __future__ import annotations

import pytest

from splitrl.runtime import conversation as C
from splitrl.runtime import protocol as P
from splitrl.runtime.chat import EdgeChat
from splitrl.runtime.cloud import CloudServer
from splitrl.runtime.edge import EdgeClient, RetryPolicy
from splitrl.runtime.faults import DOWN, LinkProxy, Rule
from splitrl.runtime.limits import Limits
from tests.harness_tiny import CASES, RestartingCloud, tiny_split_model
from tests.test_conversation import TURNS, unsplit

LIMITS = Limits(read_s=2.0)
FAST_RETRY = RetryPolicy(attempts=2, base_s=0.01, cap_s=0.05)
# every kind of turn and move: split with mixed attention, cloud-only, edge-only, back to split
PLANS = ("attn_mixed_ffn_down", "cloud_only", "edge_only", "attn_mixed", "whole_layer_on_edge")
N = 4


@pytest.fixture(scope="module")
def sm():
    return tiny_split_model()


@pytest.fixture(scope="module")
def want(sm):
    return unsplit(sm, TURNS, N)


def plan(sm, name):
    b, units = CASES[name]
    return sm.plan(b, "fp16", units)


def chat_over(sm, endpoints, force, prices=None):
    client = EdgeClient(sm, endpoints, timeout=2.0, retry=FAST_RETRY)
    return client, EdgeChat(client, prices or C.Prices.of(sm, 1e-3, 1e-9), force)


@pytest.mark.parametrize("force", ["kv", "recompute"])
def test_a_chat_keeps_and_moves_its_caches_over_the_wire(sm, want, force):
    cloud = CloudServer(sm, insecure_no_auth=True, limits=LIMITS).start()
    try:
        client, chat = chat_over(sm, [(cloud.host, cloud.port)], force)
        got = [chat.turn(new, plan(sm, name), N).tokens for new, name in zip(TURNS, PLANS, strict=True)]
        chat.forget()
        client.close()
    finally:
        cloud.stop()
    assert got == want
    assert chat.rebuilds == 1                       # the first turn starts the chat; every later one continues
    assert [m.how for m in chat.migrations] == [force] * 4 and all(m.nbytes > 0 for m in chat.migrations)
    assert cloud.stats["migrations"] == 4 and cloud.stats["rejected/lost"] == 0
    assert not cloud._conversations                 # FORGET dropped it


def test_a_cloud_restart_mid_chat_loses_no_turn(sm, want):
    """The cloud dies during turn 2; the edge rebuilds the chat on the restarted cloud from its tokens."""
    cloud = RestartingCloud(sm, LIMITS)
    # turn 1 (split) answers 4 tokens; the 6th TOKEN frame is turn 2's 2nd (cloud-only)
    rule = Rule(DOWN, P.Kind.TOKEN, nth=6, action="call", hook=cloud.crash_and_restart)
    try:
        with LinkProxy(cloud.address, rules=[rule]) as proxy:
            client, chat = chat_over(sm, [proxy.address], "auto")
            results = [chat.turn(new, plan(sm, name), N) for new, name in zip(TURNS, PLANS, strict=True)]
            client.close()
    finally:
        cloud.stop()
    assert [r.tokens for r in results] == want
    assert all(r.status == "ok" and r.fell_back == "" for r in results)
    assert chat.rebuilds == 2                       # the start, and the turn the crash cut short
    assert cloud.new.stats["migrations"] == 3


def test_an_unknown_chat_is_refused_as_lost(sm):
    cloud = CloudServer(sm, insecure_no_auth=True, limits=LIMITS).start()
    try:
        client = EdgeClient(sm, [(cloud.host, cloud.port)], timeout=2.0)
        with pytest.raises(P.FrameError, match="lost"):
            client.links[0].turn(1, 12345, 10, plan(sm, "attn_mixed"), 2)
        client.close()
    finally:
        cloud.stop()
    assert cloud.stats["rejected/lost"] == 1


def test_splitrl_edge_runs_its_prompts_as_one_chat(sm, tmp_path, capsys):
    """Three prompts: the first starts the chat, the next two continue on the caches the cloud kept."""
    from splitrl.runtime import edge_cli
    from tests.harness_tiny import save_tiny_model
    cloud = CloudServer(sm, insecure_no_auth=True, limits=LIMITS).start()
    try:
        argv = ["--model", save_tiny_model(tmp_path / "tiny"), "--cloud", f"{cloud.host}:{cloud.port}",
                "--plan", "1,fp16,101001", "--prompt", "w1 w2 w3", "--prompt", "w4 w5", "--prompt", "w6",
                "--max-new", "3", "--timeout", "5", "--fallback", "none"]
        assert edge_cli.main(argv) == 0
    finally:
        cloud.stop()
    out = capsys.readouterr().out
    assert "3 turns, 2 continued on the kept caches" in out, out
    assert cloud.stats["opened"] == 3 and not cloud._conversations        # 3 turns; FORGET at the end
