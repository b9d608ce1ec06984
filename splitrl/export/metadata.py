"""The ONNX policy's metadata: what export writes and the edge runtime reads (no torch, no JAX).

Keys are `splitrl.<name>` entries of the model's `metadata_props`; values are strings (JSON where
structured). `write` adds them to an onnx ModelProto, `read` returns them from an onnxruntime session.
"""

from __future__ import annotations

METADATA_PREFIX = "splitrl."


def read(session) -> dict[str, str]:
    """The splitrl entries of an onnxruntime session's custom metadata, without the prefix."""
    meta = session.get_modelmeta().custom_metadata_map
    return {k[len(METADATA_PREFIX):]: v for k, v in meta.items() if k.startswith(METADATA_PREFIX)}


def write(model, entries: dict[str, str]) -> None:
    """Add `entries` ({name: string}) to an onnx ModelProto's metadata_props, prefixed."""
    for k, v in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"{METADATA_PREFIX}{k}", v
