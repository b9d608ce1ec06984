"""Resumable measurements: one JSON line per finished cell, appended and flushed as soon as it is done.

A rerun with the same settings (the `fingerprint`) reuses every cell already in the file; cells
measured under other settings are ignored (and kept, in case those settings come back). A line cut
short by a crash is skipped. The file is `.jsonl`, so `splitrl-profiles validate` never mistakes it
for a profile table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class CellStore:
    def __init__(self, path: Path, fingerprint: dict):
        self.path = Path(path)
        self.fp = json.dumps(fingerprint, sort_keys=True)
        self.cells: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if isinstance(rec, dict) and rec.get("fp") == self.fp and "key" in rec:
                    self.cells[rec["key"]] = rec["value"]

    def __contains__(self, key: str) -> bool:
        return key in self.cells

    def get(self, key: str) -> dict:
        return self.cells[key]

    def put(self, key: str, value: dict) -> None:
        self.cells[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"fp": self.fp, "key": key, "value": value}) + "\n")
            f.flush()
            os.fsync(f.fileno())
