"""The observation contract (splitrl/env/features.py): the env, the export metadata and the edge
runtime compute the same features, and a changed constant reaches all three."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splitrl.env import Action, make
from splitrl.env import features as F
from splitrl.export import metadata as metadata_io

SCENARIOS = ("default", "chen_noise_fading", "trace_4g_bus")


def random_states(env, params, n: int, seed: int):
    """n env states: reached by random actions, then every observed field redrawn over a wide range."""
    key = jax.random.PRNGKey(seed)
    _, state = env.reset(key, params)
    states = []
    rng = np.random.default_rng(seed)
    for i in range(n):
        action = Action(boundary=jnp.int32(rng.integers(0, env.num_boundaries)), fmt=jnp.int32(rng.integers(0, 3)),
                        units=jnp.asarray(rng.integers(0, 2, env.num_units), jnp.int32))
        _, state, *_ = env.step(jax.random.fold_in(key, 10_000 + i), state, action, params)
        states.append(state.replace(
            bw_est=jnp.float32(10 ** rng.uniform(2, 9)), rtt=jnp.float32(rng.uniform(1e-3, 1.0)),
            loss_p=jnp.float32(rng.uniform(0, 0.5)), snr_db=jnp.float32(rng.normal(20, 15)),
            cloud_load=jnp.float32(rng.uniform(0, 0.99)), cloud_wait_est=jnp.float32(rng.exponential(20.0)),
            backlog=jnp.float32(rng.uniform(0, 60)),
            z_energy=jnp.float32(rng.uniform(0, 5)), z_acc=jnp.float32(rng.uniform(0, 5)),
            prompt_len=jnp.float32(rng.integers(1, 4096)), output_len=jnp.float32(rng.integers(1, 512)),
            last_boundary=jnp.int32(rng.integers(0, env.n_layers + 1)), last_fmt=jnp.int32(rng.integers(0, 3)),
            last_edge_frac=jnp.float32(rng.uniform()), time=jnp.int32(rng.integers(0, 200))))
    return states


def runtime_features(meta: metadata_io.PolicyMetadata, raw: dict) -> np.ndarray:
    """What `splitrl.runtime.policy.OnnxPolicy.features` computes (numpy, from the metadata alone)."""
    return F.evaluate(meta.features, meta.shift, meta.scale, {k: np.asarray(v) for k, v in raw.items()}, np,
                      meta.feature_bound)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_runtime_features_equal_the_env_features(scenario):
    env, params = make(scenario)
    meta = metadata_io.parse(metadata_io.for_policy(env, params, "m", 0, (8,)), "<test>")
    assert [f.name for f in meta.features] == list(F.NAMES) and env.obs_dim == len(F.FEATURES)
    worst = 0.0
    for state in random_states(env, params, 24, seed=len(scenario)):
        want = np.asarray(env.get_obs(state, params).features)
        got = runtime_features(meta, jax.device_get(env.raw_features(state, params)))
        assert np.isfinite(want).all() and want.shape == (env.obs_dim,)
        worst = max(worst, float(np.max(np.abs(got - want))))
    assert worst <= 1e-6, worst


def test_a_changed_constant_reaches_env_export_and_runtime(monkeypatch):
    env, params = make("chen_noise_fading")             # analog noise on: the SNR feature is live
    state = random_states(env, params, 1, seed=3)[0]
    before = np.asarray(env.get_obs(state, params).features)
    monkeypatch.setattr(F, "LOG_BW_SCALE", 0.25)
    monkeypatch.setattr(F, "SNR_REF_DB", 25.0)
    after = np.asarray(env.get_obs(state, params).features)
    changed = {F.NAMES[i] for i in np.flatnonzero(before != after)}
    assert changed == {"log_bw_est", "snr"}, changed
    meta = metadata_io.parse(metadata_io.for_policy(env, params, "m", 0, (8,)), "<test>")
    i_bw, i_snr = F.NAMES.index("log_bw_est"), F.NAMES.index("snr")
    assert meta.scale[i_bw] == np.float32(0.25) and meta.shift[i_snr] == np.float32(25.0)
    got = runtime_features(meta, jax.device_get(env.raw_features(state, params)))
    np.testing.assert_allclose(got, after, atol=1e-6)


def test_metadata_of_another_format_is_refused():
    env, params = make("default")
    entries = metadata_io.for_policy(env, params, "m", 0, (8,))
    with pytest.raises(metadata_io.MetadataError, match="re-export"):
        metadata_io.parse(entries | {"metadata_format": "1"}, "old.onnx")
    with pytest.raises(metadata_io.MetadataError, match="old.onnx.*re-export"):
        metadata_io.parse({k: v for k, v in entries.items() if k != "raw_defaults"}, "old.onnx")
    with pytest.raises(ValueError, match="feature 0"):
        F.from_spec([{"name": "x"}])


def test_one_feature_by_name_matches_the_vector():
    env, params = make("chen_noise_fading")
    state = random_states(env, params, 1, seed=5)[0]
    full = np.asarray(env.get_obs(state, params).features)
    assert np.asarray(F.value("snr", state.snr_db, params, env.n_layers, jnp)) == full[F.NAMES.index("snr")]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_cloud_wait_is_in_the_contract_and_o1(scenario):
    """The published wait is a feature (raw source `cloud_wait_est`, seconds over the timeout); on states the
    env reaches it is the Erlang-C expectation at the observed load, and on any state it stays bounded."""
    from splitrl.env import cloud
    env, params = make(scenario)
    i = F.NAMES.index("cloud_wait")
    assert F.FEATURES[i].source == "cloud_wait_est" and "cloud_wait_est" in F.SOURCES
    timeout = float(params.channel.timeout_s)
    key = jax.random.PRNGKey(7)
    obs, state = env.reset(key, params)
    for t in range(5):      # reached states: the published wait is the expectation at the published load
        want = float(cloud.expected_wait(params.cloud, state.cloud_load))
        assert float(state.cloud_wait_est) == pytest.approx(want, rel=1e-6, abs=1e-9)
        assert float(obs.features[i]) == pytest.approx(min(want / timeout, F.FEATURE_BOUND), rel=1e-5, abs=1e-7)
        obs, state, *_ = env.step(jax.random.fold_in(key, t), state, Action(jnp.int32(0), jnp.int32(0),
                                  jnp.zeros(env.num_units, jnp.int32)), params)
    waits, feats = [], []
    for st in random_states(env, params, 24, seed=len(scenario)):
        waits.append(float(st.cloud_wait_est))
        feats.append(float(env.get_obs(st, params).features[i]))
    feats = np.asarray(feats)
    assert (feats >= 0).all() and (feats <= F.FEATURE_BOUND).all()
    np.testing.assert_allclose(feats, np.minimum(np.asarray(waits) / timeout, F.FEATURE_BOUND), rtol=1e-5)
    assert np.median(feats) < 3        # waits of tens of seconds map to O(1)
