"""The exported policy at run time (onnxruntime only, no JAX): build the observation the simulator
would, from what the edge measures, and turn the greedy action into a `Plan`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from splitrl.export import metadata as metadata_io


class PolicyError(RuntimeError):
    """The policy file cannot be used: missing, not ONNX, not exported by splitrl-export."""


class PolicyMismatch(PolicyError):
    """A valid policy for another model or unit layout."""


class OnnxPolicy:
    def __init__(self, path: str | Path, model_name: str | None = None, sm=None):
        import onnxruntime as ort
        self.path = Path(path)
        if not self.path.is_file():
            raise PolicyError(f"{self.path}: no such file; export a trained run with "
                              f"splitrl-export RUN_DIR --out {self.path}")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises several types for a bad file
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise PolicyError(f"{self.path}: not a loadable ONNX model ({first}); re-export it with splitrl-export") from None
        self.meta = metadata_io.read(self.session)
        missing = {"model", "features", "obs_norm", "masks", "units"} - set(self.meta)
        if missing:
            raise PolicyError(f"{self.path} lacks splitrl metadata {sorted(missing)}: export it with splitrl-export")
        self.model = self.meta["model"]
        try:
            self.features = json.loads(self.meta["features"])
            self.norm = json.loads(self.meta["obs_norm"])
            masks = json.loads(self.meta["masks"])
            self.boundary_mask = np.asarray(masks["boundary_mask"], bool)
            self.unit_mask = np.asarray(masks["unit_mask"], bool)
            self.units = json.loads(self.meta["units"])
        except (ValueError, KeyError, TypeError) as e:
            raise PolicyError(f"{self.path}: its splitrl metadata is damaged ({e}); re-export it with splitrl-export") from None
        self.sm = None
        self.last = (0, 0, 0.0)   # last boundary, format, edge fraction
        self.t = 0
        self.bind(model_name, sm)

    def bind(self, model_name: str | None, sm=None) -> OnnxPolicy:
        """Check the policy against the model the runtime loaded (PolicyMismatch when it is another)."""
        if model_name is not None and model_name != self.model:
            raise PolicyMismatch(f"{self.path} was trained for model {self.model!r}, but this runtime runs "
                                 f"{model_name!r}: export a policy trained on a scenario of that model")
        units = self.units
        if sm is not None and (units["n_units"] != sm.n_units or units["n_layers"] != sm.n_layers):
            raise PolicyMismatch(f"{self.path}: {units} placement units, the loaded model has "
                                 f"{sm.n_units} units and {sm.n_layers} layers")
        self.sm = sm if sm is not None else self.sm
        return self

    def observe(self, bw_bytes_s: float, rtt_s: float, prompt_len: int, output_len: int, backlog: float = 0.0,
                cloud_load: float = 0.0, loss_p: float = 0.0) -> np.ndarray:
        """The 17 features of SplitEnv.get_obs, in the order recorded in the policy's metadata."""
        n = self.norm
        last_b, last_f, last_frac = self.last
        values = {
            "log_bw_est": (math.log(max(bw_bytes_s, 1.0)) - n["bw_log_mean"]) / 2.0,
            "rtt": rtt_s / n["rtt_mean_s"] - 1.0, "loss_p": loss_p, "snr": 0.0, "cloud_load": cloud_load,
            "backlog": backlog / n["q_max"], "z_energy": 0.0, "z_acc": 0.0,
            "prompt_len": prompt_len / n["prompt_hi_max"], "output_len": output_len / n["output_hi_max"],
            "last_boundary": last_b / n["n_layers"], "last_fp16": float(last_f == 0), "last_int8": float(last_f == 1),
            "last_int4": float(last_f == 2), "last_edge_frac": last_frac,
            "time": (self.t % n["max_steps"]) / n["max_steps"], "load": n["arrival_feature"]}
        return np.clip(np.array([values[k] for k in self.features], np.float32), -10.0, 10.0)

    def act(self, features: np.ndarray) -> tuple[int, int, list[int]]:
        out = self.session.run(None, {"features": features[None], "boundary_mask": self.boundary_mask[None],
                                      "format_mask": np.ones((1, 3), bool), "unit_mask": self.unit_mask[None]})
        b, f, units = int(out[3][0]), int(out[4][0]), [int(u) for u in out[5][0]]
        self.last, self.t = (b, f, float(np.mean(units))), self.t + 1
        return b, f, units

    def for_requests(self, request, est):
        """EdgeClient's policy hook: a Plan for this request from the edge's link estimates."""
        from splitrl.profiles.formats import TX_FORMATS
        b, f, units = self.act(self.observe(est.bw, est.rtt, len(request.prompt), request.max_new))
        return self.sm.plan(b, TX_FORMATS[f], units)
