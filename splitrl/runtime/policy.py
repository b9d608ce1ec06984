"""The exported policy at run time (onnxruntime only, no JAX): the observation the simulator would
build, from what the edge measures, through the observation contract the policy's metadata carries
(splitrl.env.features, splitrl.export.metadata); and the greedy action as a `Plan`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splitrl.env import features as F
from splitrl.export import metadata as metadata_io


class PolicyError(RuntimeError):
    """The policy file cannot be used: missing, not ONNX, not exported by splitrl-export."""


class PolicyMismatch(PolicyError):
    """A valid policy for another model or unit layout."""


THERMAL_ZONES = Path("/sys/class/thermal")


def edge_temperature_c(zones: Path | None = None) -> float | None:
    """The hottest thermal zone's temperature (°C) as Linux reports it (a phone, a Pi, a Jetson), or None
    where there is no sensor to read (`zones`: THERMAL_ZONES)."""
    zones = THERMAL_ZONES if zones is None else zones
    temps = []
    for zone in sorted(zones.glob("thermal_zone*/temp")):
        try:
            temps.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(temps) if temps else None


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
        try:
            self.meta = metadata_io.parse(metadata_io.read(self.session), str(self.path))
        except metadata_io.MetadataError as e:
            raise PolicyError(str(e)) from None
        if "soc" in F.sources(self.meta.features):
            raise PolicyMismatch(f"{self.path}: the policy was trained on a battery (a scenario with a battery "
                                 f"section); splitrl-edge does not track a battery queue yet: export a policy trained "
                                 f"without one")
        self.model = self.meta.model
        self.boundary_mask, self.unit_mask = self.meta.boundary_mask, self.meta.unit_mask
        self.sm = None
        self.last = (0, 0, 0.0)   # last boundary, format, edge fraction
        self.t = 0
        self.bind(model_name, sm)

    def bind(self, model_name: str | None, sm=None) -> OnnxPolicy:
        """Check the policy against the model the runtime loaded (PolicyMismatch when it is another)."""
        if model_name is not None and model_name != self.model:
            raise PolicyMismatch(f"{self.path} was trained for model {self.model!r}, but this runtime runs "
                                 f"{model_name!r}: export a policy trained on a scenario of that model")
        if sm is not None and (self.meta.n_units != sm.n_units or self.meta.n_layers != sm.n_layers):
            raise PolicyMismatch(f"{self.path}: {self.meta.n_units} placement units and {self.meta.n_layers} layers, "
                                 f"the loaded model has {sm.n_units} units and {sm.n_layers} layers")
        self.sm = sm if sm is not None else self.sm
        return self

    def features(self, raw: dict) -> np.ndarray:
        """The contract's features from raw quantities (every source of the policy's features)."""
        m = self.meta
        return F.evaluate(m.features, m.shift, m.scale, raw, np, m.feature_bound)

    def observe(self, bw_bytes_s: float, rtt_s: float, prompt_len: int, output_len: int, backlog: float = 0.0,
                cloud_load: float = 0.0, loss_p: float = 0.0, connected: bool = True,
                cloud_wait: float = 0.0, temp_c: float | None = None, ctx_len: float | None = None,
                kv_split: float | None = None) -> np.ndarray:
        """The features from the edge's own measurements, its last decision, the slot count and what the
        cloud publishes (`cloud_wait`, seconds); what it cannot measure (SNR, the virtual queues, the
        expected load) at the scenario's values. A policy trained where the edge heats also reads the
        edge's temperature: `temp_c`, else the hottest Linux thermal zone; with neither it refuses. A policy
        trained on conversations reads the chat's cached positions and where they live (`ctx_len`,
        `kv_split`: splitrl.runtime.chat.EdgeChat), and refuses without them."""
        last_b, last_f, last_frac = self.last
        raw = self.meta.raw_defaults | {
            "bw_est": max(bw_bytes_s, 1.0), "rtt": rtt_s, "loss_p": loss_p, "cloud_load": cloud_load,
            "cloud_wait_est": max(cloud_wait, 0.0),
            "connected": float(connected), "backlog": backlog, "prompt_len": prompt_len, "output_len": output_len,
            "last_boundary": last_b, "last_fmt": last_f, "last_edge_frac": last_frac,
            "time": self.t % self.meta.episode_slots}
        if "temp_c" in F.sources(self.meta.features):
            temp_c = edge_temperature_c() if temp_c is None else temp_c
            if temp_c is None:
                raise PolicyMismatch(f"{self.path}: the policy observes the edge's temperature (trained where the edge "
                                     f"heats), and this machine has no sensor under {THERMAL_ZONES}; pass temp_c, or "
                                     f"export a policy trained on a scenario without heat")
            raw["temp_c"] = temp_c
        if "ctx_len" in F.sources(self.meta.features):
            if ctx_len is None or kv_split is None:
                raise PolicyMismatch(f"{self.path}: the policy was trained on conversations and reads the chat's "
                                     "cached context and where it lives; run it per turn of an EdgeChat (for_turn)")
            raw["ctx_len"], raw["kv_split"] = ctx_len, kv_split
        return self.features(raw)

    def act(self, features: np.ndarray) -> tuple[int, int, list[int]]:
        out = self.session.run(None, {"features": features[None], "boundary_mask": self.boundary_mask[None],
                                      "format_mask": np.ones((1, 3), bool), "unit_mask": self.unit_mask[None]})
        b, f, units = int(out[3][0]), int(out[4][0]), [int(u) for u in out[5][0]]
        self.last, self.t = (b, f, float(np.mean(units))), self.t + 1
        return b, f, units

    def for_turn(self, chat, new_tokens: int, max_new: int):
        """The Plan of a chat's next turn (splitrl.runtime.chat.EdgeChat): the request plus what the chat
        holds and where (the env's ctx_len and kv_split)."""
        from splitrl.profiles.formats import TX_FORMATS
        est = chat.client.est
        b, f, units = self.act(self.observe(est.bw, est.rtt, new_tokens, max_new, cloud_wait=est.cloud_wait,
                                            ctx_len=chat.ctx, kv_split=chat.kv_split))
        return self.sm.plan(b, TX_FORMATS[f], units)

    def for_requests(self, request, est):
        """EdgeClient's policy hook: a Plan for this request from the edge's link estimates and the wait
        the cloud published in its last PONG (`LinkEstimator.cloud_wait`)."""
        from splitrl.profiles.formats import TX_FORMATS
        b, f, units = self.act(self.observe(est.bw, est.rtt, len(request.prompt), request.max_new,
                                            cloud_wait=est.cloud_wait))
        return self.sm.plan(b, TX_FORMATS[f], units)
