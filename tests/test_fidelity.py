"""The simulator's costs, tails and failures (issue: model fidelity): the shared cloud's admission queue,
disconnections, resume-on-timeout, sampled retransmissions, bufferbloat and request-level response times."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splitrl.env import channel as ch
from splitrl.env import cloud, make
from splitrl.env.cost import request_cost, transfer_time
from splitrl.env.crossing import rounds_std
from splitrl.env.types import Action, Conditions
from splitrl.evaluation.stats import request_times, seed_stats


def _cond(bw=1.25e6, rtt=0.04, loss_p=0.0, cloud_load=0.5, cloud_wait=0.0, connected=1.0, reconnect=0.0):
    return Conditions(bw=jnp.float32(bw), rtt=jnp.float32(rtt), loss_p=jnp.float32(loss_p), snr_db=jnp.float32(30.0),
                      cloud_load=jnp.float32(cloud_load), cloud_wait=jnp.float32(cloud_wait),
                      connected=jnp.float32(connected), reconnect=jnp.float32(reconnect))


@pytest.fixture(scope="module")
def default():
    return make("default")


def _cost(params, b, cond, units=None, prompt=256.0, output=32.0, env=None):
    U = params.costs.unit_is_attn.shape[0]
    units = jnp.zeros(U) if units is None else jnp.asarray(units, jnp.float32)
    return {k: float(v) for k, v in request_cost(params, jnp.int32(b), jnp.int32(0), units, prompt, output, cond).items()}


# ----------------------------------------------------------------------------- the shared cloud
def test_erlang_c_matches_closed_forms_and_the_wait_grows_with_load():
    assert cloud.erlang_c(1, 0.7) == pytest.approx(0.7)                       # M/M/1: P(wait) = rho
    a = 2 * 0.6                                                                # M/M/2 by the textbook formula
    want = (a**2 / 2 / (1 - 0.6)) / (1 + a + a**2 / 2 / (1 - 0.6))
    assert cloud.erlang_c(2, 0.6) == pytest.approx(want)
    env, params = make("default")
    waits = [float(cloud.expected_wait(params.cloud, jnp.float32(r))) for r in (0.3, 0.9, 0.99)]
    assert waits[0] < waits[1] < waits[2] and waits[2] > 10 * waits[1]        # the knee near saturation


def test_sampled_admission_wait_has_the_expected_mean(default):
    _, params = default
    load = jnp.float32(0.97)
    u = jax.random.uniform(jax.random.PRNGKey(0), (2, 200_000), minval=1e-7, maxval=1 - 1e-7)
    sampled = jax.vmap(lambda a, b: cloud.sample_wait(params.cloud, load, a, b))(u[0], u[1])
    expected = float(cloud.expected_wait(params.cloud, load))
    assert expected > 0 and float(sampled.mean()) == pytest.approx(expected, rel=0.03)
    assert float(jnp.mean(sampled > 0)) < 1.0                                  # many requests do not wait at all


def test_cloud_wait_delays_only_plans_that_use_the_cloud(default):
    env, params = default
    quiet, busy = _cost(params, 0, _cond()), _cost(params, 0, _cond(cloud_wait=2.0))
    assert busy["latency"] == pytest.approx(quiet["latency"] + 2.0, rel=1e-5) and busy["cloud_wait"] == 2.0
    alone = _cost(params, env.n_layers, _cond(cloud_wait=2.0))
    assert alone["cloud_wait"] == 0.0 and alone["latency"] == pytest.approx(_cost(params, env.n_layers, _cond())["latency"])


# ----------------------------------------------------------------------------- disconnections
def test_a_down_link_runs_the_request_on_the_edge_or_fails_it(default):
    env, params = default
    alone = _cost(params, env.n_layers, _cond())
    down = _cost(params, 0, _cond(connected=0.0))
    assert down["fell_back"] == 1.0 and down["failed"] == 0.0 and down["bytes_up"] == 0.0
    assert down["latency"] == pytest.approx(float(params.channel.detect_s) + alone["latency"], rel=1e-5)
    big_env, big = make("splitwise_llama-2-13b_raspberry-pi-5")              # 13B never fits the Pi alone
    lost = _cost(big, 0, _cond(connected=0.0))
    assert lost["failed"] == 1.0 and lost["latency"] == pytest.approx(float(big.channel.timeout_s))


def test_outages_traces_and_the_markov_link_disconnect(default):
    env, params = make("outage_heavy")
    _, state = env.reset(jax.random.PRNGKey(0), params)
    seen = []
    for i in range(200):
        _, state, _, _, _, info = env.step(jax.random.PRNGKey(i), state, Action(jnp.int32(0), jnp.int32(0),
                                                                                 jnp.zeros(env.n_units, jnp.int32)), params)
        seen.append((float(info["connected"]), int(state.regime)))
    assert {c for c, r in seen if r == ch.OUTAGE} == {0.0} and {c for c, r in seen if r != ch.OUTAGE} == {1.0}
    env, params = default
    always_down = params.replace(channel=params.channel.replace(p_drop=jnp.float32(1.0), p_restore=jnp.float32(0.0)))
    _, state = env.reset(jax.random.PRNGKey(0), always_down)
    for i in range(3):
        _, state, _, _, _, info = env.step(jax.random.PRNGKey(i), state, Action(jnp.int32(0), jnp.int32(0),
                                                                                 jnp.zeros(env.n_units, jnp.int32)),
                                           always_down)
        assert float(info["connected"]) == 0.0 and float(info["fell_back"]) == 1.0


def test_rtt_grows_as_the_link_slows():
    _, params = make("default")
    rtts = [float(ch.rtt_of(params.channel, jnp.float32(bw), 0.0)) for bw in (1.25e7, 1.25e5, 1.25e4)]
    assert rtts[0] < rtts[1] < rtts[2]
    assert rtts[2] - rtts[0] == pytest.approx(float(params.channel.queue_bytes) * (1 / 1.25e4 - 1 / 1.25e7), rel=1e-4)


# ----------------------------------------------------------------------------- timeouts resume on the edge
def test_a_timed_out_request_resumes_from_its_last_token(default):
    env, params = default
    cond, prompt, output = _cond(bw=1e5), 64.0, 64.0                      # a slow link: the split is slow
    patient = params.replace(channel=params.channel.replace(timeout_s=jnp.float32(1e4)))
    planned = _cost(patient, 10, cond, prompt=prompt, output=output)
    timeout = 0.3 * planned["latency"]
    tight = params.replace(channel=params.channel.replace(timeout_s=jnp.float32(timeout)))
    resumed = _cost(tight, 10, cond, prompt=prompt, output=output)
    alone = _cost(params, env.n_layers, _cond(), prompt=prompt, output=output)
    assert planned["timed_out"] == 0.0 and resumed["timed_out"] == 1.0 and resumed["failed"] == 0.0
    # past the timeout the edge finishes: never later than restarting there from scratch
    assert timeout < resumed["latency"] <= timeout + alone["latency"] + 1e-6
    # the edge work done before the timeout is charged too
    assert resumed["edge_compute_s"] > resumed["latency"] - timeout


def test_resuming_keeps_the_tokens_done_before_the_timeout(default):
    env, params = default
    cond, prompt, output = _cond(bw=1e5), 32.0, 64.0
    full = _cost(params, 4, cond, prompt=prompt, output=output)
    late = params.replace(channel=params.channel.replace(timeout_s=jnp.float32(0.95 * full["latency"])))
    early = params.replace(channel=params.channel.replace(timeout_s=jnp.float32(0.05 * full["latency"])))
    near_done, barely_started = _cost(late, 4, cond, prompt=prompt, output=output), _cost(early, 4, cond, prompt=prompt,
                                                                                              output=output)
    assert near_done["timed_out"] == 1.0 and barely_started["timed_out"] == 1.0
    # late in the request, most tokens are kept: less is left to decode on the edge after the timeout
    assert near_done["latency"] - 0.95 * full["latency"] < barely_started["latency"] - 0.05 * full["latency"]


# ----------------------------------------------------------------------------- retransmissions
def test_sampled_retransmissions_average_to_the_expectation():
    args = dict(bw=1e6, rtt=0.05, loss_p=0.3, packet_bytes=1024.0, max_retx=3.0)
    expected = float(transfer_time(5e4, **args))
    u = jax.random.uniform(jax.random.PRNGKey(1), (100_000,))
    draws = jax.vmap(lambda x: transfer_time(5e4, **args, u=x))(u)
    assert float(draws.mean()) == pytest.approx(expected, rel=0.01)
    assert float(draws.std()) == pytest.approx(float(rounds_std(5e4, **args)), rel=0.03)
    small = jax.vmap(lambda x: transfer_time(2048.0, **args, u=x))(u)      # two packets: rounds are a gamble
    assert float(small.max()) > 2 * float(transfer_time(2048.0, **args))   # a tail event, not an average
    assert float(transfer_time(5e4, **(args | {"loss_p": 0.0}), u=0.5)) == pytest.approx(0.025 + 0.05)


# ----------------------------------------------------------------------------- response times
def test_response_time_percentiles_are_over_requests_and_include_queueing():
    lat = np.array([[1.0, 1.0, 1.0, 1.0]])
    out = {"arrivals": np.array([[1.0, 3.0, 0.0, 2.0]]), "drops": np.array([[0.0, 0.0, 0.0, 1.0]]),
           "request_failed": np.zeros((1, 4)), "response_time": np.array([[1.0, 4.0, 2.0, 3.0]]), "latency": lat}
    times, answered = request_times(out)
    assert sorted(times[answered].tolist()) == [1.0, 3.0, 4.0, 4.0, 4.0] and (~answered).sum() == 1
    env, params = make("default")
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    from splitrl.baselines import make_baseline
    from splitrl.evaluation.run import rollout
    edge_only = make_baseline("edge_only").bind(env, params)
    raw = jax.device_get(rollout(env, edge_only, params, edge_only.init(env, params), keys, keys, 100))
    stats = seed_stats(raw)
    # the edge alone cannot keep up: requests queue, so the response p95 is far above one request's service
    assert stats["latency_p95"] > 3 * stats["service_p95"] and stats["backlog_mean"] > 1


# ----------------------------------------------------------------------------- mixing, pipelining, radio
def test_a_split_sublayer_pays_the_measured_mixing_cost(default):
    env, params = default                                                   # the edge table is measured here
    assert float(params.costs.mix[0, 1]) > 1.1                             # units one by one: ~1.2x in decode
    unmixed = params.replace(costs=params.costs.replace(mix=jnp.ones_like(params.costs.mix)))
    attn = np.asarray(params.costs.unit_is_attn)
    whole_attn = attn.astype(np.float32)                                    # attention all on the edge, FFN on the cloud
    half_attn = (attn & (np.cumsum(attn) <= attn.sum() // 2)).astype(np.float32)
    cond = _cond(bw=1e8)
    same = [_cost(p, 5, cond, units=whole_attn)["edge_compute_s"] for p in (params, unmixed)]
    assert same[0] == pytest.approx(same[1])
    mixed, free = (_cost(p, 5, cond, units=half_attn)["edge_compute_s"] for p in (params, unmixed))
    assert mixed > free


def test_a_pipelined_split_prefill_overlaps_edge_wire_and_cloud(default):
    env, params = default
    chunked = params.replace(channel=params.channel.replace(prefill_chunk=jnp.float32(64.0)))
    cond, prompt = _cond(bw=2.5e5), 1024.0
    serial, piped = (_cost(p, 8, cond, prompt=prompt, output=1.0)["latency"] for p in (params, chunked))
    assert piped < 0.9 * serial
    cloud_only = [_cost(p, 0, cond, prompt=prompt, output=1.0)["latency"] for p in (params, chunked)]
    assert cloud_only[0] == pytest.approx(cloud_only[1])


def test_the_radio_charges_transfers_the_connected_state_and_the_tail():
    env, params = make("splitwise_gpt2-xl_galaxy-s23")                     # an LTE phone (Huang et al.)
    rd = params.radio
    assert float(rd.tail_s) > 5 and float(rd.connected_w) > 0.5
    cond = _cond(bw=1.25e6)
    cloud = _cost(params, 0, cond, prompt=128.0, output=64.0)
    idle_only = float(params.costs.power_idle_w) * cloud["latency"]
    assert cloud["energy"] > idle_only + float(rd.connected_w) * 0.5 * cloud["latency"]
    alone = _cost(params, env.n_layers, cond, prompt=128.0, output=64.0)
    rested = params.replace(radio=rd.replace(**{k: jnp.float32(0.0) for k in rd.__dataclass_fields__}))
    assert alone["energy"] == pytest.approx(_cost(rested, env.n_layers, cond, prompt=128.0, output=64.0)["energy"])
    assert cloud["energy"] > _cost(rested, 0, cond, prompt=128.0, output=64.0)["energy"]
