"""Sim-to-real over a grid, in small: the lossy link, the grid runner (tiny model, resumable), and the
calibration (recovers known terms from synthetic rows; held-out errors; the file and its checks)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from splitrl.runtime import calibrate as C
from splitrl.runtime import grid as G
from splitrl.runtime.faults import LinkProxy
from tests.harness_tiny import PROMPT, reference_tokens, tiny_split_model

TRUE = {"edge_compute_scale": 1.3, "cloud_compute_scale": 0.8, "bandwidth_scale": 0.9, "crossing_s": 0.002,
        "loss_scale": 2.0, "request_rtts": 1.0, "pipelined_share": 0.2}


@pytest.fixture(scope="module")
def sm():
    return tiny_split_model()


@pytest.fixture(scope="module")
def params():
    from splitrl.runtime.measure import simulator
    return simulator("default")[1]


def test_loss_recovery_model():
    with LinkProxy(("127.0.0.1", 9), rtt_s=0.1, loss=0.2, seed=3) as p:
        waits = [p._recovery("up", 100) for _ in range(4000)]      # one segment: never a fast retransmit
        assert np.mean([w > 0 for w, _ in waits]) == pytest.approx(0.2, abs=0.03)
        first = [w for w, b in waits if b == p.mss]                   # lost once, re-sent once
        assert first and all(w == pytest.approx(0.2) for w in first)   # a tail-loss probe: 2 RTT
        big = [p._recovery("up", 100 * p.mss) for _ in range(200)]    # 100 segments: mostly fast retransmits
        assert min(w for w, _ in big if w) == pytest.approx(0.1)
    with LinkProxy(("127.0.0.1", 9), rtt_s=0.1) as p:
        assert p._recovery("up", 10**6) == (0.0, 0)
    with pytest.raises(ValueError, match="loss"):
        LinkProxy(("127.0.0.1", 9), loss=1.0)


def test_grid_rows_on_a_lossy_link_and_resume(sm, tmp_path):
    plans = [sm.plan(0, "fp16", (0,) * 6), sm.plan(1, "int8", (0, 1, 1, 0, 1, 0))]
    grid = G.cells((20.0, 50.0), (10.0,), (0.3,))
    out = tmp_path / "grid.jsonl"
    rows = G.run_grid(sm, plans, PROMPT, 4, grid, 2, lambda *a: 0.5, out, log=lambda s: None)
    assert len(rows) == 8 and len({G.row_key(r) for r in rows}) == 8 and all(r["status"] == "ok" for r in rows)
    assert {r["plan"] for r in rows} == {"0,fp16,000000", "1,int8,011010"} and all(r["output"] == 4 for r in rows)
    assert sum(r["lost_segments"] for r in rows) > 0               # 30 % loss: recovered, not failed
    assert all(r["predicted_s"] == 0.5 and r["measured_s"] > 0 for r in rows)

    def never(*a):
        raise AssertionError("a finished grid measured again")
    assert G.run_grid(sm, plans, PROMPT, 4, grid, 2, never, out, log=lambda s: None) == rows


def test_the_lossy_link_delivers_the_same_tokens(sm):
    from splitrl.runtime.cloud import CloudServer
    from splitrl.runtime.edge import EdgeClient, Request
    cloud = CloudServer(sm, insecure_no_auth=True).start()
    try:
        with LinkProxy((cloud.host, cloud.port), bandwidth=1e6, rtt_s=0.002, loss=0.3, seed=1) as proxy:
            client = EdgeClient(sm, [proxy.address], timeout=10, fallback="none")
            res = client.generate(Request(0, PROMPT, 5), sm.plan(1, "fp16", (0, 1, 1, 0, 1, 0)))
            client.close()
            assert sum(proxy.lost_segments.values()) > 0
    finally:
        cloud.stop()
    assert res.status == "ok" and res.tokens == reference_tokens(sm, n=5) and res.retries == 0


def synthetic_rows(params, noise: float, seed: int = 0) -> list[dict]:
    """Rows of the grid's plans and links whose 'measured' latency is the prediction under TRUE."""
    rng = np.random.default_rng(seed)
    rows = [{"mbps": c.mbps, "rtt_ms": c.rtt_ms, "loss": c.loss, "plan": p, "mode": "", "repeat": k, "prompt": 32,
             "output": 32, "status": "ok"}
            for k in range(3) for c in G.cells((1.0, 20.0), (10.0, 120.0), (0.0, 0.01)) for p in G.GRID_PLANS]
    truth = C.predict_rows(params, rows, TRUE)
    for r, t in zip(rows, truth, strict=True):
        r["measured_s"] = float(t * (1 + noise * rng.standard_normal()))
    return rows


def test_identity_calibration_is_the_simulators_prediction(params):
    from splitrl.runtime.measure import predict
    from splitrl.runtime.split_model import Plan
    rows = synthetic_rows(params, 0.0)[:5]
    got = C.predict_rows(params, rows)
    for r, g in zip(rows, got, strict=True):
        b, f, u = r["plan"].split(",")
        plan = Plan(int(b), f, tuple(map(int, u)), 30, 3)
        assert g == pytest.approx(predict(params, plan, 32, 32, r["mbps"] * 1e6 / 8, r["rtt_ms"] / 1e3, r["loss"]),
                                  rel=1e-5)


def test_the_fit_recovers_known_terms_and_held_out_errors_shrink(params, tmp_path):
    from splitrl.runtime.gridreport import calibrate_and_report
    rows = synthetic_rows(params, 0.02)
    terms = C.fit(params, rows)
    # one round trip a request and 1 % loss move latency little: 2 % noise blurs their terms most
    tolerance = {"loss_scale": dict(rel=0.5), "request_rtts": dict(abs=0.25), "crossing_s": dict(rel=0.1, abs=5e-4)}
    for k, v in TRUE.items():
        assert terms[k] == pytest.approx(v, **tolerance.get(k, dict(rel=0.1))), k
    cal, summ = calibrate_and_report(params, rows, tmp_path, "test", tmp_path / "grid.jsonl", "default")
    assert summ["before"]["median_cell_mae"] > 0.08 and summ["after"]["worst_cell_mae"] < 0.05
    assert C.load_calibration(cal) == pytest.approx(json.loads(cal.read_text())["terms"])
    doc = json.loads(cal.read_text())
    assert doc["schema"] == C.SCHEMA and len(doc["fit"]["held_out"]["folds"]) == 3 and doc["provenance"]["command"]
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "calibrated (held out)" in (tmp_path / "report.md").read_text()


def test_calibration_file_errors_name_the_field(tmp_path):
    good = {"schema": C.SCHEMA, "terms": dict(C.IDENTITY)}
    cases = [({**good, "schema": "x"}, "schema"),
             ({**good, "terms": {**C.IDENTITY, "loss_scale": -1}}, "terms.loss_scale = -1"),
             ({**good, "terms": {k: v for k, v in C.IDENTITY.items() if k != "crossing_s"}}, "terms.crossing_s = None"),
             ({**good, "terms": {**C.IDENTITY, "bandwidth_scale": float("nan")}}, "terms.bandwidth_scale"),
             ({**good, "terms": {**C.IDENTITY, "speed": 2}}, "unknown terms")]
    for i, (doc, words) in enumerate(cases):
        p = tmp_path / f"c{i}.json"
        p.write_text(json.dumps(doc))
        with pytest.raises(C.CalibrationError, match=f"{p.name}: .*{words.replace('.', '[.]')}"):
            C.load_calibration(p)
    (tmp_path / "ok.json").write_text(json.dumps(good))
    assert C.load_calibration(tmp_path / "ok.json") == C.IDENTITY


def test_apply_costs_scales_only_compute_time(params):
    from splitrl.env.tables import decode_layer_row, decode_model_row
    scaled = C.apply_costs(params, {**C.IDENTITY, "edge_compute_scale": 2.0})
    U = params.costs.unit_is_attn.shape[0]
    a, b = (decode_layer_row(np.asarray(p.costs.layer_rows), U) for p in (params, scaled))
    for name in ("edge", "norm_edge", "prefix"):                               # the edge's compute seconds
        np.testing.assert_allclose(getattr(b, name), 2 * getattr(a, name), rtol=1e-6)
    for name in ("cloud", "norm_cloud", "suffix", "edge_j", "norm_edge_j", "prefix_j"):   # cloud and joules untouched
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
    am, bm = (decode_model_row(np.moveaxis(np.asarray(p.costs.model_rows), 1, -1)) for p in (params, scaled))
    for name in am._fields:
        factor = 2.0 if name in ("edge_embed", "edge_head", "edge_all") else 1.0
        np.testing.assert_allclose(getattr(bm, name), factor * getattr(am, name), rtol=1e-6)
    assert C.link_inputs({**C.IDENTITY, "crossing_s": 0.001, "bandwidth_scale": 0.5}, 100.0, 0.04, 0.01) == \
        pytest.approx((50.0, 0.042, 0.01))


@pytest.mark.parametrize("plan, pipelined, cloud", [
    ("0,fp16,0000000", 0, True),       # cloud-only: only the request round trips
    ("30,fp16,0000000", 0, False),     # edge-only: nothing
    ("8,fp16,0000000", 0, True),       # a layer split: one tensor up per pass
    ("15,int8,1010110", 1, True),      # mixed attention: pa follows h up
    ("22,int4,1111000", 1, True),      # attention on the edge, FFN mixed: pf follows h up
    ("22,int4,1110000", 0, True),      # FFN all on the cloud: h alone
])
def test_corrections_count_request_round_trips_and_pipelined_crossings(params, plan, pipelined, cloud):
    import jax.numpy as jnp
    b, _, u = plan.split(",")
    terms = {**C.IDENTITY, "request_rtts": 1.0, "pipelined_share": 0.0}
    got = float(C.corrections(params, terms, jnp.int32(int(b)), jnp.asarray([int(c) for c in u]), 32.0, 0.1))
    assert got == pytest.approx((0.1 if cloud else 0.0) - pipelined * 0.05 * 32, abs=1e-6)
    assert float(C.corrections(params, C.IDENTITY, jnp.int32(int(b)), jnp.asarray([int(c) for c in u]), 32.0, 0.1)) == 0
