"""The fleet env (splitrl/env/fleet.py, docs/fleet.md): shapes under jit + vmap, N = 1 against the
single-device env, the cloud queue's conservation, contention at peak load, the reward's sum, the trace
replay and the scenario file's errors. Small fleets and short rollouts: each test compiles at most once."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from splitrl.bench.env import random_split_action
from splitrl.env import ScenarioError
from splitrl.env import rollout as R
from splitrl.env.fleet import FLEET_INFO, FleetEnv, cloud_lyapunov, fixed_action, start
from splitrl.env.fleet_scenario import FLEET_DIR, load_fleet_dict, make_fleet, make_fleet_with_info
from splitrl.env.split_env import SplitEnv
from splitrl.profiles import load_model

LOW, PEAK = "llama-2-7b_1xa100_low", "llama-2-7b_1xa100_peak"


def _fleet_dict(name=LOW, **workload) -> dict:
    data = load_fleet_dict(name)[0]
    data["workload"] = {**data["workload"], **workload}
    return data


@pytest.fixture(scope="module")
def small():
    """A 4-device fleet in 2 cells (devices 0 and 2 share a cell, 1 and 3 the other)."""
    data = _fleet_dict(background_rate=10.0)
    data |= {"n_devices": 4, "channel": {"cells": 2, "correlation": 0.0}}
    return make_fleet_with_info(data)


@partial(jax.jit, static_argnums=(0, 2, 3))
def _random_rollout(env, params, n_envs, n_slots, key):
    """Random placements per device; records (obs, reward, info, state before the step), time-major."""
    def act(obs, _state, policy_keys, _env_keys):
        keys = jax.vmap(lambda k: jax.random.split(k, env.n_devices))(policy_keys)
        one = lambda k, o: random_split_action(env.device, k, o)  # noqa: E731
        return jax.vmap(jax.vmap(one))(keys, obs), None

    reset_key, key = jax.random.split(key)
    carry = start(env, params, jax.random.split(reset_key, n_envs))
    record = lambda s: (s.obs, s.reward, s.info, s.state)  # noqa: E731
    return R.rollout(env, params, act, carry, jax.random.split(key, n_slots), R.training_keys(n_envs), record)[1]


@partial(jax.jit, static_argnums=(0, 3, 4))
def _fixed_rollout(env, params, action, n_envs, n_slots, key):
    act = lambda obs, s, pk, ek: (jax.tree.map(lambda x: jnp.broadcast_to(x, (n_envs, *x.shape)), action), None)  # noqa: E731
    reset_key, key = jax.random.split(key)
    carry = start(env, params, jax.random.split(reset_key, n_envs))
    return R.rollout(env, params, act, carry, jax.random.split(key, n_slots), R.training_keys(n_envs),
                     lambda s: (s.info, s.state), auto_reset=False)[1]


@pytest.fixture(scope="module")
def small_rollout(small):
    env, params, _ = small
    return _random_rollout(env, params, 3, 40, jax.random.PRNGKey(0))


def test_shapes_and_finiteness_under_jit_and_vmap(small, small_rollout):
    env, params, _ = small
    obs, reward, info, _ = small_rollout
    T, E, N = 40, 3, env.n_devices
    assert obs.features.shape == (T, E, N, env.obs_dim)
    assert obs.unit_mask.shape == (T, E, N, env.num_boundaries, env.n_units)
    assert reward.shape == (T, E, N)
    for k in ("latency", "energy", "delta_ppl", "backlog", "served", "arrivals", "drops", "response_time",
              "cloud_wait", "objective", "boundary", "cloud_work"):
        assert info[k].shape == (T, E, N), k
    for k in FLEET_INFO:
        assert info[k].shape == (T, E), k
    for k, v in info.items():
        if k != "final_observation":
            assert np.isfinite(np.asarray(v, np.float64)).all(), k
    assert np.isfinite(obs.features).all() and np.isfinite(reward).all()
    assert (np.asarray(info["arrivals"]) > 0).any() and (np.asarray(info["offloaded_work"]) > 0).any()


def test_cloud_queue_conserves_work(small, small_rollout):
    """W' = max(W + offloaded + background − C·slot_s, 0) every slot, and W never goes negative."""
    _, params, _ = small
    _, _, info, state = small_rollout
    w, w_next = np.asarray(state.cloud.work), np.asarray(info["cloud_queue_s"])
    capacity = float(params.cloud.replicas * params.slot_s)
    want = np.maximum(w + np.asarray(info["offloaded_work"]) + np.asarray(info["background_work"]) - capacity, 0.0)
    np.testing.assert_allclose(w_next, want, rtol=1e-5, atol=1e-5)
    assert (w_next >= 0).all() and (w_next > 0).any()
    # what each device offloads is its served requests' cloud work; the fleet's is their sum
    np.testing.assert_allclose(np.asarray(info["offloaded_work"]), np.asarray(info["cloud_work"]).sum(-1), rtol=1e-5)


def test_published_wait_is_the_queue_one_slot_old(small, small_rollout):
    """What a device sees before slot t+1 is what the load balancer published after slot t: the wait
    W_{t+1} / C (the queue that slot left) next to the utilisation ρ_t, in every device's observation."""
    from splitrl.env import features as F
    env, params, _ = small
    obs, _, info, state = small_rollout
    C, i = float(params.cloud.replicas), F.NAMES.index("cloud_wait")
    queue = np.asarray(info["cloud_queue_s"])                        # W_{t+1}, [T, E]
    published = np.asarray(state.device.cloud_wait_est)              # seen before slot t, [T, E, N]
    np.testing.assert_allclose(published[1:], np.repeat(queue[:-1, :, None] / C, env.n_devices, -1), rtol=1e-6)
    assert (published[0] == 0).all() and (published[1:] > 0).any()   # an empty queue at reset
    timeout = np.asarray(params.device.channel.timeout_s)             # [N]
    want = np.minimum(published / timeout, F.FEATURE_BOUND)
    np.testing.assert_allclose(np.asarray(obs.features)[..., i], want, rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(obs.features)[..., i]).max() <= F.FEATURE_BOUND


def test_rewards_sum_to_the_fleet_drift_plus_penalty(small, small_rollout):
    """Σ_i r_i = −scale · [Σ_i (V·penalty_i + ΔL_i) + L_cloud(W') − L_cloud(W)]."""
    _, params, _ = small
    _, reward, info, state = small_rollout
    V, scale = float(params.device.reward.V[0]), float(params.device.reward.scale[0])
    w, w_next = np.asarray(state.cloud.work), np.asarray(info["cloud_queue_s"])
    cloud_drift = np.asarray(cloud_lyapunov(params, w_next) - cloud_lyapunov(params, w))
    fleet = (V * np.asarray(info["penalty"]) + np.asarray(info["drift"])).sum(-1) + cloud_drift
    np.testing.assert_allclose(np.asarray(reward).sum(-1), -scale * fleet, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(info["fleet_objective"]), fleet, rtol=1e-4, atol=1e-5)
    assert np.abs(cloud_drift).max() > 0


def test_trace_replay_rate_and_clipped_lengths(small, small_rollout):
    """Arrivals are Poisson at rate_per_device × the trace minute's rate shape (within 4 σ over the run);
    the trace's shape averages 1, so the configured rate is the mean over the trace; every request's
    lengths are a trace request's, clipped to the context."""
    env, params, info_ = small
    _, _, info, state = small_rollout
    ctx = load_model(info_.devices[0].model).max_context
    minute = (np.floor((np.asarray(state.cloud.start_s) + np.asarray(state.time) * float(params.slot_s)) / 60)
              .astype(int) % params.trace.rate_shape.shape[0])
    rate = float(params.device.workload.arrival_rate[0]) * float(params.slot_s)
    expected = (rate * np.asarray(params.trace.rate_shape)[minute]).sum() * env.n_devices
    got = np.asarray(info["arrivals"]).sum()
    assert abs(got - expected) < 4 * np.sqrt(expected), (got, expected)
    assert np.mean(np.asarray(params.trace.rate_shape)) == pytest.approx(1.0, rel=1e-6)
    tr_p, tr_o = np.asarray(params.trace.prompt), np.asarray(params.trace.output)
    assert (tr_p + tr_o <= ctx).all() and (tr_p >= 1).all() and (tr_o <= ctx - 1).all()
    assert (tr_p + tr_o == ctx).any()        # the Azure trace has requests longer than LLaMA-2's context
    p, o = np.asarray(state.device.prompt_len).ravel(), np.asarray(state.device.output_len).ravel()
    pairs = set(zip(tr_p.tolist(), tr_o.tolist(), strict=True))
    assert all((a, b) in pairs for a, b in zip(p.tolist(), o.tolist(), strict=True))


def test_devices_in_a_cell_share_their_channel_draws(small):
    env, params, _ = small
    def log_bw(corr):
        _, _, info, _ = _random_rollout(env, params.replace(channel_corr=jnp.float32(corr)), 3, 40,
                                        jax.random.PRNGKey(1))
        return np.diff(np.log(np.asarray(info["bandwidth"])), axis=0).reshape(-1, env.n_devices)
    x = log_bw(0.9)     # slot-to-slot changes: the innovations, nearly independent over time
    assert np.corrcoef(x[:, 0], x[:, 2])[0, 1] > 0.6            # devices 0 and 2: one cell
    assert abs(np.corrcoef(x[:, 0], x[:, 1])[0, 1]) < 0.35      # devices 0 and 1: two cells
    assert abs(np.corrcoef(*log_bw(0.0)[:, [0, 2]].T)[0, 1]) < 0.35


def test_one_device_without_background_prices_like_the_single_device_env():
    """N = 1, background 0, Poisson classes: the same draws give SplitEnv's slot. The one difference is the
    cloud: SplitEnv's exogenous load is set to ~0 (no Erlang-C wait) and the fleet's queue starts empty,
    so both wait 0 and decode at batch 1 speed (1 + ρ(c − 1) < B*)."""
    data = _fleet_dict(kind="classes", background_rate=0.0, rate_per_device=0.5)
    data |= {"n_devices": 1, "channel": {"cells": 1, "correlation": 0.0}}
    fenv, fparams = make_fleet(data)
    single = SplitEnv(fenv.n_layers, fenv.n_units, fenv.device.channel_kind, fenv.device.max_arrivals, None, "n1", "ar1")
    sparams = jax.tree.map(lambda x: x[0], fparams.device)
    sparams = sparams.replace(cloud=sparams.cloud.replace(load_mean=jnp.float32(1e-3), load_rho=jnp.float32(0.0),
                                                        load_std=jnp.float32(0.0)))
    u = jax.random.uniform(jax.random.PRNGKey(3), (fenv._n_step_draws(),), minval=1e-7, maxval=1 - 1e-7)
    _, fstate = fenv.reset(jax.random.PRNGKey(4), fparams)
    fstate = fstate.replace(device=fstate.device.replace(backlog=jnp.full(1, 3.0)))
    sstate = jax.tree.map(lambda x: x[0], fstate.device)

    @jax.jit
    def both(b, fmt):
        action = fixed_action(fenv, b, fmt)
        f = fenv._step(u, fstate, action, fparams)
        s = single._step(u[:SplitEnv.N_STEP_DRAWS], sstate, jax.tree.map(lambda x: x[0], action), sparams)
        return f, s

    for b, fmt in ((0, 0), (6, 1)):
        (_, fnew, freward, _, finfo), (_, snew, sreward, _, sinfo) = both(b, fmt)
        assert float(sinfo["cloud_wait"]) == 0.0 and float(finfo["cloud_queue_s"]) == 0.0
        for k in ("latency", "energy", "delta_ppl", "backlog", "served", "arrivals", "drops", "response_time",
                  "bandwidth", "connected", "penalty", "drift", "objective"):
            np.testing.assert_allclose(np.asarray(finfo[k])[0], np.asarray(sinfo[k]), rtol=1e-5, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(np.asarray(freward)[0], np.asarray(sreward), rtol=1e-5)
        for k in ("bw", "bw_est", "backlog", "z_energy", "prompt_len", "output_len"):
            np.testing.assert_allclose(getattr(fnew.device, k)[0], getattr(snew, k), rtol=1e-5, err_msg=k)
        assert float(finfo["served"][0]) > 0 and float(finfo["cloud_work"][0]) > 0


def test_cloud_only_saturates_the_cloud_at_peak_load_but_not_at_low():
    """The shipped fleets (N = 64): under cloud-only the work queue grows at peak load and stays ~0 at low load."""
    queue = {}
    for name in (LOW, PEAK):
        env, params = make_fleet(name)
        info, _ = _fixed_rollout(env, params, fixed_action(env, 0), 8, 100, jax.random.PRNGKey(5))
        queue[name] = (float(np.mean(info["cloud_queue_s"][-1])), float(np.mean(info["cloud_util"])))
    assert queue[LOW][0] < 0.5 and queue[LOW][1] < 0.6, queue
    assert queue[PEAK][0] > 5.0 and queue[PEAK][1] > 0.75, queue      # busy minutes saturate it; others not


@pytest.mark.parametrize("path", sorted(FLEET_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_fleet_builds_with_a_versioned_id_and_the_cloud_it_names(path):
    data = yaml.safe_load(path.read_text())
    env, params, info = make_fleet_with_info(path.stem)
    assert info.id == data["id"] and data["id"].rsplit("-v", 1)[1].isdigit()
    assert env.n_devices == data["n_devices"] and float(params.cloud.replicas) == data["cloud"]["replicas"]
    assert sorted(set(info.device_type.tolist())) == list(range(len(data["devices"])))


def test_shipped_fleets_share_one_structure():
    """Low, medium and peak differ only in numbers: one compiled step serves all three."""
    names = sorted(p.stem for p in FLEET_DIR.glob("llama-2-7b_1xa100_*.yaml"))
    assert names == ["llama-2-7b_1xa100_low", "llama-2-7b_1xa100_medium", "llama-2-7b_1xa100_peak"]
    envs = [make_fleet(n)[0] for n in names]
    assert all(e == envs[0] and hash(e) == hash(envs[0]) for e in envs)
    assert isinstance(envs[0], FleetEnv) and envs[0].n_devices == 64


@pytest.mark.parametrize("change, fragment", [
    ({"n_devices": 0}, "n_devices = 0: must be an integer >= 1"),
    ({"channel": {"cells": 4, "correlation": 1.5}}, "channel.correlation = 1.5: must be <= 1"),
    ({"channel": {"cells": 80, "correlation": 0.5}}, "channel.cells = 80: must be <= n_devices"),
    ({"cloud": {"replicas": 0, "wait_ref_s": 10.0}}, "cloud.replicas = 0: must be an integer >= 1"),
    ({"workload": {"kind": "poisson"}}, "workload.kind = 'poisson': must be one of"),
    ({"workload": {"trace": "nope"}}, "workload.trace = 'nope': must name a workload"),
    ({"workload": {"background_rate": -1}}, "workload.background_rate = -1.0: must be >= 0"),
    ({"devices": [{"scenario": "splitwise_llama-2-7b_galaxy-s23", "share": 0.7}]}, "devices = [0.7]: the shares must sum to 1"),
    ({"devices": [{"scenario": "no_such", "share": 1.0}]}, "devices[0].scenario = 'no_such'"),
    ({"replicas": 2}, "replicas = 2: unknown field"),
])
def test_bad_fleet_fields_raise_clear_errors(tmp_path, change, fragment):
    data = load_fleet_dict(LOW)[0]
    for k, v in change.items():
        data[k] = {**data[k], **v} if isinstance(v, dict) and k in data else v
    path = tmp_path / "bad_fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ScenarioError) as e:
        make_fleet(path)
    assert str(path) in str(e.value) and fragment in str(e.value), str(e.value)


def test_the_loopback_prediction_is_the_env_cloud_queue():
    """scripts/fleet_loopback.py predicts each request's wait with the env's serve_cloud: 1 s slots, one
    replica; 1.5 replica-s arrive in slot 0 (two requests), 0.3 in slot 1, 0.2 in slot 2, so the queue at
    the start of slots 0, 1, 2 is 0, 0.5 and 0 (W_1 = 1.5 − 1, W_2 = max(0.5 + 0.3 − 1, 0)); two replicas
    drain it all."""
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("fleet_loopback", Path(__file__).parents[1] / "scripts/fleet_loopback.py")
    loopback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loopback)
    sent, work = np.array([0.1, 0.7, 1.2, 2.5]), np.array([1.0, 0.5, 0.3, 0.2])
    np.testing.assert_allclose(loopback.predicted_waits(sent, work, 1.0), [0.0, 0.0, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(loopback.predicted_waits(sent, work, 1.0, replicas=2), [0.0, 0.0, 0.0, 0.0], atol=1e-6)


def test_each_device_observes_how_slow_it_is_from_its_own_tables(small):
    """One policy serves every device type, so each observes its whole-model edge/cloud decode-time ratio
    (the fleet's one feature beyond the single-device contract); two device types, two values."""
    from splitrl.env import features as F
    from splitrl.env.tables import edge_cloud_ratio
    env, params, info = small
    assert env.device.features == F.contract(device=True) and env.device.features[-1].name == "edge_ratio"
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    ratio = np.array([float(edge_cloud_ratio(jax.tree.map(lambda x, i=i: x[i], params.device.costs)))
                      for i in range(env.n_devices)])
    assert (ratio > 1).all()                                       # every edge is slower than an A100
    np.testing.assert_allclose(np.asarray(obs.features[:, -1]), np.log(ratio) * F.EDGE_RATIO_SCALE, rtol=1e-5)
    kinds = np.asarray(info.device_type)
    assert len(set(kinds.tolist())) == 2 and len(np.unique(ratio.round(4))) == 2
    for k in set(kinds.tolist()):                                  # one value per device type
        assert len(np.unique(ratio[kinds == k].round(4))) == 1


def test_a_congestion_toll_charges_each_devices_reward_its_own_queue_drift_and_nothing_else(small):
    """`cloud.toll` = κ: r_i gains −scale·κ·(W·a_i + a_i²/2)/(C·wait_ref_s)², the objective is unchanged."""
    env, params, _ = small
    tolled = params.replace(cloud=params.cloud.replace(toll=jnp.float32(300.0)))
    _, s = env.reset(jax.random.PRNGKey(5), params)
    s = s.replace(cloud=s.cloud.replace(work=jnp.float32(6.0)),
                  device=s.device.replace(backlog=jnp.full(env.n_devices, 2.0)))
    step = jax.jit(lambda p: env.step_env(jax.random.PRNGKey(6), s, fixed_action(env, 0), p))
    (_, _, r0, _, i0), (_, _, r1, _, i1) = step(params), step(tolled)
    for k in ("objective", "fleet_objective", "cloud_work", "cloud_queue_s"):
        np.testing.assert_array_equal(np.asarray(i0[k]), np.asarray(i1[k]), err_msg=k)
    a, ref = np.asarray(i0["cloud_work"]), float(params.cloud.replicas * params.cloud.wait_ref_s)
    assert (a > 0).all()
    want = -np.asarray(params.device.reward.scale) * 300.0 * (6.0 * a + 0.5 * a ** 2) / ref ** 2
    np.testing.assert_allclose(np.asarray(r1) - np.asarray(r0), want, rtol=1e-4)
