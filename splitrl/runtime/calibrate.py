"""Sim-to-real calibration of the env's latency model from grid measurements (grid.py).

Seven terms, each a change to what `splitrl.env.cost.request_cost` computes (identity = no change):

    edge_compute_scale   x every edge compute time: CostParams.layer_rows columns "edge", "norm_edge",
                         "prefix" and model_rows "edge_embed", "edge_head", "edge_all" (tables.py)
    cloud_compute_scale  x every cloud compute time: layer_rows "cloud", "norm_cloud", "suffix" and
                         model_rows "cloud_embed", "cloud_head", "cloud_all"
    bandwidth_scale      the link's goodput: transfers see bw x bandwidth_scale
    crossing_s           fixed seconds per crossing (framing, (de)quantisation, a thread hop): rtt + 2 x crossing_s
    loss_scale           loss recovery: transfers see loss_p x loss_scale
    request_rtts         round trips per request that involves the cloud, beyond its crossings (the
                         runtime's OPEN exchange): + request_rtts x rtt (with crossing_s)
    pipelined_share      share of RTT/2 paid by a crossing sent right behind another one in the same
                         direction: the edge's partial sum of a mixed sublayer follows h up (the env
                         charges each a full X; in the runtime they travel back to back)

Energy (J) columns are not touched: nothing here measures energy. `apply_costs`, `link_inputs` and
`corrections` are the pure functions the env would apply; `predict_rows` is request_cost with all
three, over measured rows. The env's `output` is the tokens a request returns (its prefill pass yields the
first, then one decode pass per token), so a request of n tokens makes n passes.

The fit minimises the squared relative error (predicted / measured - 1) over the rows with scipy's
bounded least squares, plus a weak pull of each term towards the identity (PRIOR). `held_out` refits
with each repeat left out in turn and predicts that repeat, so every row's calibrated prediction
comes from a fit that never saw it. The file (schema `splitrl.runtime-calibration/v1`) holds the
terms fitted on every row, the held-out errors and the provenance; `load_calibration` refuses any
other schema or a missing, non-finite or out-of-range term.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

SCHEMA = "splitrl.runtime-calibration/v1"
# term -> (identity, lower bound, upper bound)
TERMS = {"edge_compute_scale": (1.0, 0.1, 10.0), "cloud_compute_scale": (1.0, 0.1, 10.0),
         "bandwidth_scale": (1.0, 0.1, 10.0), "crossing_s": (0.0, 0.0, 0.5), "loss_scale": (1.0, 0.05, 50.0),
         "request_rtts": (0.0, 0.0, 5.0), "pipelined_share": (1.0, 0.0, 1.0)}
IDENTITY = {k: v[0] for k, v in TERMS.items()}
_UNIT = np.array([1.0, 1.0, 1.0, 1e-3, 1.0, 1.0, 1.0])     # the optimiser works with crossing_s in ms
_SCALES = np.array([True, True, True, False, True, False, False])
_START = np.array([1.0, 1.0, 1.0, 0.5, 1.0, 0.5, 0.5])     # inside the bounds: a bound and the prior hold it
# A weak pull towards "no change" (a 1 % relative error per factor e of a scale, per 0.5 ms of
# crossing time, per round trip, per whole share): terms the rows cannot tell apart stay at the
# identity instead of at a bound.
PRIOR = 0.01
_ADDITIVE_WEIGHT = np.array([0, 0, 0, 2.0, 0, 1.0, 1.0])


def env_output(tokens: int):
    """request_cost's `output` for a request that returns `tokens` tokens (the same count: its prefill
    pass yields the first token, then one decode step per token)."""
    return tokens


class CalibrationError(ValueError):
    pass


def apply_costs(params, terms: dict):
    """EnvParams with the compute-time tables scaled (pure; works on traced values too)."""
    from splitrl.env.tables import scale_compute
    c = params.costs
    layer, model = scale_compute(c.layer_rows, c.model_rows, terms["edge_compute_scale"], terms["cloud_compute_scale"])
    return params.replace(costs=c.replace(layer_rows=layer, model_rows=model))


def link_inputs(terms: dict, bw, rtt, loss_p):
    """(bandwidth, RTT, loss) as request_cost's transfers should see them (pure)."""
    return bw * terms["bandwidth_scale"], rtt + 2 * terms["crossing_s"], loss_p * terms["loss_scale"]


def corrections(params, terms: dict, boundary, units, output, rtt):
    """Seconds to add to request_cost's latency for request_rtts and pipelined_share (pure, JAX)."""
    import jax.numpy as jnp
    L = params.costs.layer_rows.shape[0] - 1
    on_e, attn = units > 0, params.costs.unit_is_attn
    a_e, a_c = jnp.any(on_e & attn), jnp.any(~on_e & attn)
    f_e, f_c = jnp.any(on_e & ~attn), jnp.any(~on_e & ~attn)
    cloud_only = (boundary == 0) & ~jnp.any(on_e)
    edge_only = (boundary >= L) | ((boundary == L - 1) & jnp.all(on_e))
    pipelined = (a_e & a_c).astype(jnp.float32) + (~a_c & f_e & f_c).astype(jnp.float32)   # per pass
    split = ~cloud_only & ~edge_only
    saved = jnp.where(split, (1 - terms["pipelined_share"]) * rtt / 2 * pipelined * output, 0.0)   # output passes
    request = jnp.where(edge_only, 0.0, terms["request_rtts"] * (rtt + 2 * terms["crossing_s"]))
    return request - saved


def row_arrays(rows: list[dict]) -> dict:
    """The request_cost inputs of measured rows (plans as 'b,fmt,units')."""
    fmts = ("fp16", "int8", "int4")
    plans = [r["plan"].split(",") for r in rows]
    return {"boundary": np.array([int(p[0]) for p in plans], np.int32),
            "fmt": np.array([fmts.index(p[1]) for p in plans], np.int32),
            "units": np.array([[int(u) for u in p[2]] for p in plans], np.int32),
            "prompt": np.array([r["prompt"] for r in rows], np.float32),
            "output": np.array([env_output(r["output"]) for r in rows], np.float32),
            "bw": np.array([r["mbps"] * 1e6 / 8 for r in rows], np.float32),
            "rtt": np.array([r["rtt_ms"] / 1e3 for r in rows], np.float32),
            "loss": np.array([r["loss"] for r in rows], np.float32)}


def _latency_fn(params):
    import jax
    import jax.numpy as jnp

    from splitrl.env.cost import project_action, request_cost
    from splitrl.env.types import Conditions

    def one(p, x, terms):
        b, f, u = project_action(p, x["boundary"], x["fmt"], x["units"])
        bw, rtt, loss = link_inputs(terms, x["bw"], x["rtt"], x["loss"])
        cond = Conditions(bw=bw, rtt=rtt, loss_p=loss, snr_db=jnp.float32(30.0), cloud_load=jnp.float32(0.0),
                          cloud_wait=jnp.float32(0.0), connected=jnp.float32(1.0), reconnect=jnp.float32(0.0))
        latency = request_cost(p, b, f, u, x["prompt"], x["output"], cond)["latency"]
        return latency + corrections(p, terms, b, u, x["output"], x["rtt"])

    @jax.jit
    def batch(theta, x):
        terms = dict(zip(TERMS, theta, strict=True))
        return jax.vmap(one, in_axes=(None, 0, None))(apply_costs(params, terms), x, terms)
    return batch


def predict_rows(params, rows: list[dict], terms: dict = IDENTITY) -> np.ndarray:
    x = row_arrays(rows)
    return np.asarray(_latency_fn(params)(np.array([terms[k] for k in TERMS], np.float32), x))


def fit(params, rows: list[dict]) -> dict:
    """The terms that minimise the squared relative error of the prediction over `rows`."""
    from scipy.optimize import least_squares
    batch, x = _latency_fn(params), row_arrays(rows)
    measured = np.array([r["measured_s"] for r in rows])

    def residual(z):
        theta = (z * _UNIT).astype(np.float32)
        identity = np.array([v[0] for v in TERMS.values()]) / _UNIT
        prior = PRIOR * np.where(_SCALES, np.log(np.maximum(z, 1e-9)), _ADDITIVE_WEIGHT * (z - identity))
        return np.concatenate([np.asarray(batch(theta, x), np.float64) / measured - 1.0, prior])
    lo = np.array([v[1] for v in TERMS.values()]) / _UNIT
    hi = np.array([v[2] for v in TERMS.values()]) / _UNIT
    z0 = _START
    sol = least_squares(residual, z0, bounds=(lo, hi), diff_step=1e-3, x_scale="jac")
    return {k: float(v) for k, v in zip(TERMS, sol.x * _UNIT, strict=True)}


def held_out(params, rows: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """Leave-one-repeat-out: (each row's prediction by a fit without its repeat, the fits)."""
    repeats = sorted({r["repeat"] for r in rows})
    if len(repeats) < 2:
        raise CalibrationError(f"held-out errors need >= 2 repeats; the rows have {repeats}")
    pred, fits = np.zeros(len(rows)), []
    for k in repeats:
        train = [r for r in rows if r["repeat"] != k]
        test = [i for i, r in enumerate(rows) if r["repeat"] == k]
        terms = fit(params, train)
        fits.append({"held_out_repeat": k, **terms})
        pred[test] = predict_rows(params, [rows[i] for i in test], terms)
    return pred, fits


def write_calibration(path: Path, terms: dict, applies_to: dict, fit_info: dict, provenance: dict) -> Path:
    doc = {"schema": SCHEMA, "terms": terms, "applies_to": applies_to, "fit": fit_info, "provenance": provenance}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def load_calibration(path: str | Path) -> dict:
    """The terms of a calibration file, or CalibrationError naming the file and the field."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{p}: cannot read a calibration from it ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise CalibrationError(f"{p}: schema = {doc.get('schema') if isinstance(doc, dict) else None!r}; "
                               f"a runtime calibration has schema {SCHEMA!r} (write one with splitrl-harness calibrate)")
    terms = doc.get("terms")
    if not isinstance(terms, dict):
        raise CalibrationError(f"{p}: terms is missing; it maps {list(TERMS)} to numbers")
    out = {}
    for k, (_, lo, hi) in TERMS.items():
        v = terms.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise CalibrationError(f"{p}: terms.{k} = {v!r}; must be a number in [{lo}, {hi}]")
        out[k] = float(v)
    extra = set(terms) - set(TERMS)
    if extra:
        raise CalibrationError(f"{p}: unknown terms {sorted(extra)}; known: {list(TERMS)}")
    return out
