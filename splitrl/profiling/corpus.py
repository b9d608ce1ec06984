"""Evaluation text that needs no download: Python's own pydoc topics (ships with CPython), or a file.

Windows are fixed-length slices of the tokenised text, spread evenly over it so that they sample
different topics; seed group s takes windows s, s + S, s + 2S, ... (S seeds), so every group spans
the whole corpus and the groups never share a window.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


class CorpusError(ValueError):
    pass


DEFAULT_CORPUS = "pydoc_data.topics (CPython's help() topics, ships with Python)"


def load_text(path: str | Path | None = None) -> tuple[str, str]:
    """(text, description). path None: the pydoc topics, in sorted topic order."""
    if path is None:
        import pydoc_data.topics as topics

        return "\n\n".join(topics.topics[k] for k in sorted(topics.topics)), DEFAULT_CORPUS
    p = Path(path).expanduser()
    if not p.is_file():
        raise CorpusError(f"corpus file {p} does not exist: give a UTF-8 text file with --corpus")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"corpus file {p} is not UTF-8 text ({exc}): convert it or give another file") from exc
    if not text.strip():
        raise CorpusError(f"corpus file {p} is empty: give a text file with at least a few thousand words")
    return text, str(p)


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def token_windows(tokenizer, text: str, window: int, n_windows: int, source: str = "corpus") -> torch.Tensor:
    """LongTensor [n, window] of evenly spread, non-overlapping windows (n <= n_windows when the
    text is short; at least one window or a CorpusError)."""
    if window < 2:
        raise CorpusError(f"window = {window}: need at least 2 tokens (one prediction)")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    available = len(ids) // window
    if available < 1:
        raise CorpusError(f"{source} has {len(ids)} tokens, fewer than one window of {window}: "
                          "give a longer text or a smaller --window")
    n = min(n_windows, available)
    starts = [int(i * (available / n)) * window for i in range(n)]
    return torch.tensor([ids[s:s + window] for s in starts], dtype=torch.long)
