"""Fault injection on loopback: every request gets its full answer (the same tokens as without the
fault) or a clear failure, with exact counts of completed, retried and fallen-back requests, none lost
or answered twice."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from splitrl.runtime import protocol as P
from splitrl.runtime.cloud import CloudServer
from splitrl.runtime.edge import EdgeClient, Request, RetryPolicy
from splitrl.runtime.faults import DOWN, UP, LinkProxy, Rule
from splitrl.runtime.limits import Limits
from tests.harness_tiny import PROMPT, RestartingCloud, reference_tokens, tiny_split_model

N_REQ, N_TOK = 3, 5
FAST_RETRY = RetryPolicy(attempts=3, base_s=0.01, cap_s=0.05)
LIMITS = Limits(read_s=2.0)
# mixed attention with the FFN's edge chunks after it: every crossing kind (h, pa, down h1, pf)
PLAN = (1, "fp16", (0, 1, 1, 0, 1, 0))


@pytest.fixture(scope="module")
def sm():
    return tiny_split_model()


@pytest.fixture(scope="module")
def want(sm):
    return reference_tokens(sm, n=N_TOK)


def run(sm, endpoints, timeout=1.0, fallback="edge", plan=PLAN):
    client = EdgeClient(sm, endpoints, timeout=timeout, retry=FAST_RETRY, fallback=fallback)
    try:
        results = client.run([Request(i, PROMPT, N_TOK) for i in range(N_REQ)], sm.plan(*plan))
    finally:
        client.close()
    assert len({r.rid for r in results}) == N_REQ          # one answer per request
    return client, results


def counts(client):
    c = client.summary()
    return {k: c.get(k, 0) for k in ("completed", "failed", "retried", "fallback_endpoint", "fallback_edge", "lost")}


@pytest.fixture
def cloud(sm):
    s = CloudServer(sm, insecure_no_auth=True, limits=LIMITS).start()
    yield s
    s.stop()


def test_no_fault_baseline(sm, want, cloud):
    with LinkProxy((cloud.host, cloud.port)) as proxy:
        client, results = run(sm, [proxy.address])
    assert all(r.tokens == want for r in results)
    assert counts(client) == dict(completed=3, failed=0, retried=0, fallback_endpoint=0, fallback_edge=0, lost=0)
    assert cloud.stats["closed"] == 3


@pytest.mark.parametrize("rule, reason", [
    (Rule(UP, P.Kind.UP_H, nth=8, action="reset"), "reset closed truncated"),  # connection reset (as the OS reports it)
    (Rule(UP, P.Kind.UP_PA, nth=3, action="drop"), "timeout"),            # a dropped frame
    (Rule(DOWN, P.Kind.TOKEN, nth=4, action="drop"), "timeout"),          # a dropped reply
    (Rule(UP, P.Kind.UP_H, nth=2, action="corrupt"), "remote"),           # the cloud rejects the checksum
    (Rule(DOWN, P.Kind.DOWN_H1, nth=5, action="corrupt"), "checksum"),    # the edge rejects the checksum
    (Rule(DOWN, P.Kind.TOKEN, nth=7, action="delay", delay_s=1.5), "timeout"),  # a delay beyond the timeout
])
def test_single_fault_is_retried_and_answer_is_unchanged(sm, want, cloud, rule, reason):
    with LinkProxy((cloud.host, cloud.port), rules=[rule]) as proxy:
        client, results = run(sm, [proxy.address])
        assert proxy.fired[rule.action] == 1
    assert all(r.tokens == want for r in results)
    assert counts(client) == dict(completed=3, failed=0, retried=1, fallback_endpoint=0, fallback_edge=0, lost=0)
    assert sum(client.errors[r] for r in reason.split()) == sum(client.errors.values()) == 1
    assert cloud.stats["replays"] == 1                 # the cloud rebuilt the request from the checkpoint
    if rule.action == "corrupt" and rule.direction == UP:
        assert cloud.stats["rejected/checksum"] == 1


def test_short_delays_need_no_retry(sm, want, cloud):
    rules = [Rule(DOWN, P.Kind.TOKEN, nth=k, action="delay", delay_s=0.2) for k in (2, 7, 11)]
    with LinkProxy((cloud.host, cloud.port), rules=rules, rtt_s=0.01) as proxy:
        client, results = run(sm, [proxy.address])
        assert proxy.fired["delay"] == 3
    assert all(r.tokens == want for r in results)
    assert counts(client)["retried"] == 0 and counts(client)["completed"] == 3


def test_cloud_killed_mid_request_falls_back_to_the_edge(sm, want):
    cloud = CloudServer(sm, insecure_no_auth=True, limits=LIMITS).start()
    rule = Rule(DOWN, P.Kind.TOKEN, nth=7, action="call", hook=cloud.kill)   # request 1, its 2nd token
    with LinkProxy((cloud.host, cloud.port), rules=[rule]) as proxy:
        client, results = run(sm, [proxy.address])
    assert all(r.tokens == want for r in results)
    # request 0 done before the kill; request 1 finishes on the edge from its checkpoint; request 2
    # finds no cloud and runs on the edge; each spent attempts-1 backoffs retrying
    assert counts(client) == dict(completed=3, failed=0, retried=2, fallback_endpoint=0, fallback_edge=2, lost=0)
    assert [r.fell_back for r in results] == ["", "edge", "edge"]


def test_cloud_killed_mid_request_falls_over_to_a_second_endpoint(sm, want):
    first, second = CloudServer(sm, insecure_no_auth=True, limits=LIMITS).start(), CloudServer(sm, insecure_no_auth=True, limits=LIMITS).start()
    rule = Rule(DOWN, P.Kind.TOKEN, nth=7, action="call", hook=first.kill)
    try:
        with LinkProxy((first.host, first.port), rules=[rule]) as proxy:
            client, results = run(sm, [proxy.address, (second.host, second.port)])
    finally:
        second.stop()
    assert all(r.tokens == want for r in results)
    assert counts(client) == dict(completed=3, failed=0, retried=2, fallback_endpoint=2, fallback_edge=0, lost=0)
    assert second.stats["replays"] == 1 and second.stats["closed"] == 2


def test_cloud_restarted_on_the_same_port_resumes_from_the_checkpoint(sm, want):
    cloud = RestartingCloud(sm, LIMITS)
    rule = Rule(DOWN, P.Kind.TOKEN, nth=3, action="call", hook=cloud.crash_and_restart)
    try:
        with LinkProxy(cloud.address, rules=[rule]) as proxy:
            client, results = run(sm, [proxy.address])
    finally:
        cloud.stop()
    assert all(r.tokens == want for r in results)
    assert counts(client) == dict(completed=3, failed=0, retried=1, fallback_endpoint=0, fallback_edge=0, lost=0)
    assert cloud.new.stats["replays"] == 1


def test_unreachable_cloud_without_fallback_is_a_clear_failure(sm):
    with LinkProxy(("127.0.0.1", 9)) as proxy:     # nothing listens on the discard port
        client, results = run(sm, [proxy.address], fallback="none")
    assert counts(client) == dict(completed=0, failed=3, retried=3, fallback_endpoint=0, fallback_edge=0, lost=0)
    assert all(r.status == "failed" and "no cloud endpoint answered" in r.error for r in results)


def test_cloud_only_requests_survive_a_reset(sm, want, cloud):
    rule = Rule(DOWN, P.Kind.TOKEN, nth=7, action="reset")
    with LinkProxy((cloud.host, cloud.port), rules=[rule]) as proxy:
        client, results = run(sm, [proxy.address], plan=(0, "fp16", (0,) * 6))
    assert all(r.tokens == want for r in results)
    assert counts(client) == dict(completed=3, failed=0, retried=1, fallback_endpoint=0, fallback_edge=0, lost=0)


def test_netem_namespace_or_skip():
    """A network namespace with tc netem needs unprivileged user namespaces and iproute2."""
    if shutil.which("unshare") is None or shutil.which("tc") is None:
        pytest.skip("tc netem not available: `unshare`/`tc` (iproute2) missing; the user-space LinkProxy shapes instead")
    probe = subprocess.run(["unshare", "-rn", "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "5ms"],
                           capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"tc netem in a user network namespace is not permitted here: {probe.stderr.strip()[:200]}")


def test_simulator_prediction_for_a_runtime_plan():
    """measure's prediction: the env's cost model for the same partition and link (SmolLM2 plans)."""
    from splitrl.runtime.measure import predict, simulator
    from splitrl.runtime.split_model import Plan
    _, params = simulator("default")
    split = Plan(8, "int8", (1, 0, 1, 0, 1, 1, 0), n_layers=30, attn_units=3)
    fast, slow = (predict(params, split, 32, 8, bw, 0.04) for bw in (1.25e6, 1.25e5))
    assert 0 < fast < slow
    edge = Plan(30, "fp16", (0,) * 7, n_layers=30, attn_units=3)
    assert predict(params, edge, 32, 8, 1.25e6, 0.04) == pytest.approx(predict(params, edge, 32, 8, 1.25e5, 0.4))
