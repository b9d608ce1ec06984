"""The ONNX policy's metadata: what `splitrl-export` writes and the edge runtime reads. This module is
the format's one home; it imports neither torch nor JAX (the env is imported only to write).

Entries are `splitrl.<name>` strings in the model's `metadata_props` (JSON where structured):
  metadata_format  FORMAT (a policy exported under another format is refused: re-export it)
  version, model, scenario, member, hidden, formats
  features         the observation contract with the scenario's numbers (splitrl.env.features.spec)
  feature_bound    the clip of every feature
  raw_defaults     raw quantities an edge cannot measure, at the scenario's values (SNR, the virtual
                   queues, the expected arrivals per slot) or the device knows from its own profile
                   (its edge/cloud decode-time ratio, the `edge_ratio` feature of fleet policies)
  episode_slots    the episode length the `time` feature wraps at
  masks, units     boundary and unit masks of the scenario; layer and unit counts
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from splitrl.env import features as F

METADATA_PREFIX = "splitrl."
FORMAT = "2"


class MetadataError(ValueError):
    pass


def for_policy(env, env_params, model_name: str, member: int, hidden) -> dict[str, str]:
    """The metadata entries of a policy trained on `env` with `env_params`."""
    import splitrl
    from splitrl.env.tables import edge_cloud_ratio
    from splitrl.profiles.formats import TX_FORMATS
    shift, scale = F.normalisers(env_params, env.n_layers, np, env.features)
    w, ch = env_params.workload, env_params.channel
    masks = {"boundary_mask": np.asarray(env_params.costs.boundary_mask).astype(int).tolist(),
             "unit_mask": np.asarray(env_params.costs.unit_mask).astype(int).tolist()}
    raw_defaults = {"snr_db": float(ch.snr_db_mean), "z_energy": 0.0, "z_acc": 0.0,
                    "arrivals_per_slot": float(w.arrival_rate * env_params.slot_s),
                    "edge_cloud_ratio": float(edge_cloud_ratio(env_params.costs))}   # the device's own profile
    return {"metadata_format": FORMAT, "version": splitrl.__version__, "model": model_name,
            "scenario": env.scenario_id, "member": str(member), "hidden": json.dumps(list(hidden)),
            "formats": json.dumps(list(TX_FORMATS)), "features": json.dumps(F.spec(shift, scale, env.features)),
            "feature_bound": repr(F.FEATURE_BOUND), "raw_defaults": json.dumps(raw_defaults),
            "episode_slots": str(int(env_params.max_steps_in_episode)), "masks": json.dumps(masks),
            "units": json.dumps({"n_units": env.num_units, "n_layers": env.n_layers})}


@dataclasses.dataclass(frozen=True)
class PolicyMetadata:
    model: str
    scenario: str
    features: tuple            # tuple[splitrl.env.features.Feature, ...]
    shift: np.ndarray
    scale: np.ndarray
    feature_bound: float
    raw_defaults: dict
    episode_slots: int
    boundary_mask: np.ndarray  # bool[L+1]
    unit_mask: np.ndarray      # bool[L+1, U]
    n_layers: int
    n_units: int


def parse(entries: dict[str, str], where: str) -> PolicyMetadata:
    """Typed metadata from the entries of `read`; raises MetadataError naming the file and the fix."""
    if entries.get("metadata_format") != FORMAT:
        raise MetadataError(f"{where}: metadata_format = {entries.get('metadata_format')!r}, this runtime reads "
                            f"{FORMAT!r}: re-export the policy with this splitrl (splitrl-export RUN_DIR)")
    try:
        features, shift, scale = F.from_spec(json.loads(entries["features"]))
        masks, units = json.loads(entries["masks"]), json.loads(entries["units"])
        return PolicyMetadata(
            model=entries["model"], scenario=entries["scenario"], features=features, shift=shift, scale=scale,
            feature_bound=float(entries["feature_bound"]), raw_defaults=json.loads(entries["raw_defaults"]),
            episode_slots=int(entries["episode_slots"]), boundary_mask=np.asarray(masks["boundary_mask"], bool),
            unit_mask=np.asarray(masks["unit_mask"], bool), n_layers=int(units["n_layers"]),
            n_units=int(units["n_units"]))
    except (KeyError, TypeError, ValueError) as e:
        raise MetadataError(f"{where}: splitrl metadata is incomplete or invalid ({type(e).__name__}: {e}); "
                            "re-export the policy with splitrl-export") from e


def read(session) -> dict[str, str]:
    """The splitrl entries of an onnxruntime session's custom metadata, without the prefix."""
    meta = session.get_modelmeta().custom_metadata_map
    return {k[len(METADATA_PREFIX):]: v for k, v in meta.items() if k.startswith(METADATA_PREFIX)}


def write(model, entries: dict[str, str]) -> None:
    """Add `entries` ({name: string}) to an onnx ModelProto's metadata_props, prefixed."""
    for k, v in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"{METADATA_PREFIX}{k}", v
