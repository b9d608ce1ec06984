"""Calibration of the analytic (roofline) model by a measurement: `calibration/<device>.json`.

`splitrl-profiles measure cost` times a real model on a host and divides each unit kind's measured time by
what the roofline predicts for the same unit on the same host, with the host's peak FLOP/s scaled to
the threads the measurement used (so the ratio is a software-efficiency factor, not a core count).
The ratio (geometric mean over the context grid) per unit kind and phase is stored here, with the
devices and models it is applied to when the shipped analytic tables are built
(`splitrl-profiles build`). Schema `splitrl.calibration/v1`:

    device, model, weight_format     what was measured (strings)
    ratios.{norm,attn,ffn,embedding,final_norm,lm_head}.{prefill,decode}   measured / analytic, > 0
    applies_to.devices, applies_to.models   lists of names the ratios are applied to
    detail                           free-form per-context numbers (not read)
    provenance                       host, tool_versions, date, command, ... (non-empty mapping)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from splitrl.profiles.errors import ProfileError
from splitrl.profiles.reader import Reader, read_document

CALIBRATION_SCHEMA = "splitrl.calibration/v1"
CAL_KINDS = ("norm", "attn", "ffn", "embedding", "final_norm", "lm_head")
CAL_PHASES = ("prefill", "decode")


@dataclasses.dataclass(frozen=True)
class Calibration:
    device: str
    model: str
    weight_format: str
    ratios: dict               # kind -> {"prefill": x, "decode": y}
    devices: tuple             # applied to these devices' analytic tables ...
    models: tuple              # ... of these models
    provenance: dict
    path: str = ""

    @classmethod
    def from_dict(cls, data: dict, path: Path | str = "<dict>") -> Calibration:
        r = Reader(path, data)
        got = r.raw("schema")
        if got != CALIBRATION_SCHEMA:
            raise r.fail("schema", got, f"must be {CALIBRATION_SCHEMA!r}", "this file is not a calibration file")
        device, model, wfmt = r.str("device"), r.str("model"), r.str("weight_format")
        rr = r.sub("ratios")
        ratios = {}
        for kind in CAL_KINDS:
            kr = rr.sub(kind)
            ratios[kind] = {ph: kr.float(ph, 0, lo_open=True) for ph in CAL_PHASES}
            kr.done()
        rr.done()
        ar = r.sub("applies_to")
        devices, models = tuple(ar.str_list("devices")), tuple(ar.str_list("models"))
        ar.done()
        if not devices or not models:
            raise r.fail("applies_to", {"devices": list(devices), "models": list(models)},
                         "needs at least one device and one model", "name the tables the ratios should scale")
        r.raw("detail", {})
        prov = r.raw("provenance")
        if not isinstance(prov, dict) or not prov:
            raise r.fail("provenance", prov, "must be a non-empty mapping saying how the ratios were measured")
        r.done()
        return cls(device=device, model=model, weight_format=wfmt, ratios=ratios, devices=devices, models=models,
                   provenance=prov, path=str(path))


def load_calibration(path: Path | str) -> Calibration:
    return Calibration.from_dict(read_document(Path(path)), path)


def calibration_for(model: str, device: str, root: Path) -> Calibration | None:
    """The calibration that applies to (model, device) in `root/calibration`, if any; two that both
    apply are an error (the tables would depend on file order)."""
    found = [c for c in (load_calibration(p) for p in sorted((Path(root) / "calibration").glob("*.json")))
             if device in c.devices and model in c.models]
    if len(found) > 1:
        raise ProfileError(found[1].path, "applies_to", {"device": device, "model": model},
                           f"also claimed by {found[0].path}", "keep one calibration per (model, device)")
    return found[0] if found else None
