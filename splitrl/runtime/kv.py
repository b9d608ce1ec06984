"""What one side keeps of a request's attention, per layer: its K/V cache by attention unit (`KV`) and,
in a conversation, the layer's input hidden states (`Hidden`), so the cache can move between the edge
and the cloud when the split changes between turns (splitrl.runtime.conversation)."""

from __future__ import annotations

import torch


class KV:
    """A growing K/V cache [1, heads, T, head_dim] of one side's attention in one layer. `units` names the
    attention units whose heads it holds, in order (set by the first append), so a conversation can move
    one unit's cache to the other side (`take`, `put`) when the split changes between turns."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.units: tuple[int, ...] = ()

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor, units: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            self.units = tuple(units)
        elif units and tuple(units) != self.units:
            raise ValueError(f"a step over attention units {tuple(units)} on a cache holding units {self.units}: "
                             "move the cache first (splitrl.runtime.conversation)")
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def _heads(self, units: tuple[int, ...]) -> torch.Tensor:
        per = self.k.shape[1] // len(self.units)
        return torch.cat([torch.arange(self.units.index(u) * per, (self.units.index(u) + 1) * per) for u in units])

    def take(self, units: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Remove the cache of these units and return its (K, V) [1, their heads, T, head_dim]."""
        missing = set(units) - set(self.units)
        if missing or self.k is None:
            raise ValueError(f"units {sorted(missing or units)} are not in this cache (it holds {self.units})")
        idx = self._heads(units)
        k, v = self.k[:, idx], self.v[:, idx]
        keep = tuple(u for u in self.units if u not in units)
        if keep:
            rest = self._heads(keep)
            self.k, self.v, self.units = self.k[:, rest], self.v[:, rest], keep
        else:
            self.k = self.v = None
            self.units = ()
        return k, v

    def put(self, units: tuple[int, ...], k: torch.Tensor, v: torch.Tensor) -> None:
        """Add the cache of these units (same length as what is held), keeping units in increasing order."""
        if self.k is None:
            self.k, self.v, self.units = k, v, tuple(units)
            return
        if set(units) & set(self.units) or k.shape[2] != self.length:
            raise ValueError(f"cannot add units {units} ({k.shape[2]} positions) to a cache of units {self.units} "
                             f"({self.length} positions)")
        merged = tuple(sorted(self.units + tuple(units)))
        per = self.k.shape[1] // len(self.units)
        parts = {u: i for i, u in enumerate(self.units)}
        ks, vs = [], []
        for u in merged:
            src_k, src_v, i = (self.k, self.v, parts[u]) if u in parts else (k, v, units.index(u))
            ks.append(src_k[:, i * per:(i + 1) * per])
            vs.append(src_v[:, i * per:(i + 1) * per])
        self.k, self.v, self.units = torch.cat(ks, 1), torch.cat(vs, 1), merged


class Hidden:
    """The input hidden state of one layer for the positions this side computed or received, kept across
    a conversation's turns: the source of a recompute when the split moves (docs/harness.md, "Conversations")."""

    def __init__(self):
        self.h: torch.Tensor | None = None      # [1, T, d]
        self.have = torch.zeros(0, dtype=torch.bool)

    def record(self, start: int, x: torch.Tensor) -> None:
        end = start + x.shape[1]
        if self.h is None or self.h.shape[1] < end:
            grown = x.new_zeros(1, end, x.shape[2])
            if self.h is not None:
                grown[:, :self.h.shape[1]] = self.h
            self.h = grown
            self.have = torch.cat([self.have, torch.zeros(end - self.have.shape[0], dtype=torch.bool)])
        self.h[:, start:end] = x
        self.have[start:end] = True
