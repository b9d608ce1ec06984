"""A Llama-family causal LM run split between an edge and a cloud, with the env's partition semantics.

Partition (`Plan`, the same as `splitrl.env.Action`): the edge runs the embedding and layers < b fully;
layer b is split by placement units (attention units = groups of KV heads with their query heads and
o_proj columns, then FFN chunks = d_ff slices of gate/up rows and down columns); partial sums merge on
the cloud; the cloud runs layers > b, the final norm and the head. b = L is edge-only, b = 0 with no
edge units is cloud-only (token ids go up, the cloud generates and streams the tokens).

One forward step over new tokens (prefill: the prompt; decode: one token), as in splitrl/env/cost.py:

    attention of layer b has cloud units   -> up: h_b (+ the edge units' attention partial sum "pa")
        ... FFN of layer b has edge units  -> down: h after attention; up: the edge FFN partial "pf"
    attention all on the edge, FFN mixed    -> up: h after attention + "pf"
    all of layer b on the edge              -> up: h_{b+1}

Every crossing goes through `send(name, tensor)`, which the runtime implements as quantise -> bytes ->
frame (wire.py); here, for tests and for the in-process fallback, it may also be the identity.

Both sides hold the whole model (the edge needs it to fall back); each side keeps the KV caches of the
attention it runs, per request, in a `Session`. A cloud session can be rebuilt from the sequence of
uplink tensors (the edge's partition checkpoint): `CloudSession.replay` is the same computation run
over the recorded history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from splitrl.lm.units import decoder_layers
from splitrl.profiles.formats import TX_FORMATS
from splitrl.runtime.kv import KV, Hidden  # noqa: F401 - KV is part of this module's interface

UP_NAMES = ("h", "pa", "pf")


# ----------------------------------------------------------------------------- the partition
@dataclasses.dataclass(frozen=True)
class Plan:
    """Where each piece runs: boundary b in 0..L, transmission format, units[A + C] (1 = edge)."""
    boundary: int
    fmt: str
    units: tuple[int, ...]
    n_layers: int
    attn_units: int

    def __post_init__(self):
        if not 0 <= self.boundary <= self.n_layers:
            raise ValueError(f"boundary = {self.boundary}: must be in 0..{self.n_layers}")
        if self.fmt not in TX_FORMATS:
            raise ValueError(f"fmt = {self.fmt!r}: must be one of {TX_FORMATS}")
        if any(u not in (0, 1) for u in self.units):
            raise ValueError(f"units = {self.units}: each must be 0 (cloud) or 1 (edge)")

    @property
    def edge_attn(self) -> tuple[int, ...]:
        return tuple(i for i, u in enumerate(self.units[: self.attn_units]) if u)

    @property
    def cloud_attn(self) -> tuple[int, ...]:
        return tuple(i for i, u in enumerate(self.units[: self.attn_units]) if not u)

    @property
    def edge_ffn(self) -> tuple[int, ...]:
        return tuple(i for i, u in enumerate(self.units[self.attn_units:]) if u)

    @property
    def cloud_ffn(self) -> tuple[int, ...]:
        return tuple(i for i, u in enumerate(self.units[self.attn_units:]) if not u)

    @property
    def mode(self) -> str:
        if self.boundary == self.n_layers:
            return "edge_only"
        if self.boundary == 0 and not any(self.units):
            return "cloud_only"
        return "split"

    @property
    def needs_down(self) -> bool:
        """The cloud sends the hidden state down mid-layer (cloud attention units, edge FFN chunks)."""
        return self.mode == "split" and bool(self.cloud_attn) and bool(self.edge_ffn)

    def up_names(self, phase: int) -> tuple[str, ...]:
        """Names of the tensors the edge sends up in phase 0 (and phase 1 when `needs_down`)."""
        if phase == 1:
            return ("pf",) if self.needs_down else ()
        if self.cloud_attn:
            return ("h", "pa") if self.edge_attn else ("h",)
        if self.cloud_ffn and self.edge_ffn:
            return ("h", "pf")
        return ("h",)

    def to_ints(self) -> list[int]:
        return [self.boundary, TX_FORMATS.index(self.fmt), *self.units]

    @classmethod
    def from_ints(cls, values: Sequence[int], n_layers: int, attn_units: int, n_units: int) -> Plan:
        values = [int(v) for v in values]
        if len(values) != 2 + n_units:
            raise ValueError(f"a plan has {2 + n_units} integers (boundary, fmt, {n_units} units), got {len(values)}")
        if not 0 <= values[1] < len(TX_FORMATS):
            raise ValueError(f"format index {values[1]} is out of range 0..{len(TX_FORMATS) - 1}")
        return cls(values[0], TX_FORMATS[values[1]], tuple(values[2:]), n_layers, attn_units)


# ----------------------------------------------------------------------------- weights and maths
def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class SplitModel:
    """A loaded HF Llama-family model with per-unit-set weights (sliced once, cached) and the maths of
    each piece. Both the edge and the cloud hold one."""

    def __init__(self, model, attn_units: int | None = None, ffn_chunks: int = 4):
        self.model = model
        self.layers = decoder_layers(model)
        cfg = model.config
        self.n_layers = len(self.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.d_model, self.d_ff = cfg.hidden_size, cfg.intermediate_size
        self.attn_units = attn_units or self.n_kv
        self.ffn_chunks = ffn_chunks
        if self.n_kv % self.attn_units or self.d_ff % self.ffn_chunks:
            raise ValueError(f"attn_units = {self.attn_units} must divide n_kv_heads = {self.n_kv} and "
                             f"ffn_chunks = {self.ffn_chunks} must divide d_ff = {self.d_ff}")
        self.n_units = self.attn_units + self.ffn_chunks
        self._attn: dict = {}
        self._ffn: dict = {}

    def plan(self, boundary: int, fmt: str, units: Sequence[int]) -> Plan:
        if len(units) != self.n_units:
            raise ValueError(f"units has {len(units)} entries; this model has {self.n_units} "
                             f"({self.attn_units} attention units, {self.ffn_chunks} FFN chunks)")
        return Plan(int(boundary), fmt, tuple(int(u) for u in units), self.n_layers, self.attn_units)

    # ---- sliced weights ----
    def attn_weights(self, layer: int, units: tuple[int, ...]) -> dict:
        key = (layer, units)
        if key not in self._attn:
            a = self.layers[layer].self_attn
            hq, hkv, hd = self.n_heads // self.attn_units, self.n_kv // self.attn_units, self.head_dim
            qi = torch.cat([torch.arange(u * hq * hd, (u + 1) * hq * hd) for u in units])
            ki = torch.cat([torch.arange(u * hkv * hd, (u + 1) * hkv * hd) for u in units])
            full = len(units) == self.attn_units

            def rows(lin, idx):
                return (lin.weight if full else lin.weight[idx].contiguous(),
                        None if lin.bias is None else (lin.bias if full else lin.bias[idx]))
            wq, bq = rows(a.q_proj, qi)
            wk, bk = rows(a.k_proj, ki)
            wv, bv = rows(a.v_proj, ki)
            wo = a.o_proj.weight if full else a.o_proj.weight[:, qi].contiguous()
            # o_proj's bias is added once per layer: by whichever side holds unit 0
            bo = a.o_proj.bias if 0 in units else None
            self._attn[key] = dict(wq=wq, bq=bq, wk=wk, bk=bk, wv=wv, bv=bv, wo=wo, bo=bo, hq=hq * len(units),
                                   hkv=hkv * len(units), scale=a.scaling)
        return self._attn[key]

    def ffn_weights(self, layer: int, chunks: tuple[int, ...]) -> dict:
        key = (layer, chunks)
        if key not in self._ffn:
            m = self.layers[layer].mlp
            n = self.d_ff // self.ffn_chunks
            idx = torch.cat([torch.arange(c * n, (c + 1) * n) for c in chunks])
            full = len(chunks) == self.ffn_chunks

            def rows(lin):
                return (lin.weight if full else lin.weight[idx].contiguous(),
                        None if lin.bias is None else (lin.bias if full else lin.bias[idx]))
            wg, bg = rows(m.gate_proj)
            wu, bu = rows(m.up_proj)
            wd = m.down_proj.weight if full else m.down_proj.weight[:, idx].contiguous()
            bd = m.down_proj.bias if 0 in chunks else None
            self._ffn[key] = dict(wg=wg, bg=bg, wu=wu, bu=bu, wd=wd, bd=bd, act=m.act_fn)
        return self._ffn[key]

    # ---- maths ----
    def rope(self, h: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.arange(pos, pos + h.shape[1]).unsqueeze(0)
        cos, sin = self.model.model.rotary_emb(h, ids)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def attention(self, x, layer: int, units: tuple[int, ...], cache: KV, rope) -> torch.Tensor:
        """Partial sum [1, S, d] of attention `units` of `layer` over x (normed), appending to `cache`."""
        w = self.attn_weights(layer, units)
        b, s, _ = x.shape
        hd = self.head_dim
        q = F.linear(x, w["wq"], w["bq"]).view(b, s, w["hq"], hd).transpose(1, 2)
        k = F.linear(x, w["wk"], w["bk"]).view(b, s, w["hkv"], hd).transpose(1, 2)
        v = F.linear(x, w["wv"], w["bv"]).view(b, s, w["hkv"], hd).transpose(1, 2)
        cos, sin = rope
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        past = cache.length
        k, v = cache.append(k, v, units)
        if s == 1:
            mask, causal = None, False
        elif past == 0:
            mask, causal = None, True
        else:   # a multi-token step after cached tokens: causal over the new ones, all of the past
            mask = torch.arange(past + s)[None, :] <= (past + torch.arange(s))[:, None]
            causal = False
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=w["scale"],
                                           enable_gqa=w["hq"] != w["hkv"])
        return F.linear(o.transpose(1, 2).reshape(b, s, -1), w["wo"], w["bo"])

    def ffn(self, x, layer: int, chunks: tuple[int, ...]) -> torch.Tensor:
        w = self.ffn_weights(layer, chunks)
        return F.linear(w["act"](F.linear(x, w["wg"], w["bg"])) * F.linear(x, w["wu"], w["bu"]), w["wd"], w["bd"])

    def full_layer(self, h, layer: int, cache: KV, rope) -> torch.Tensor:
        lyr = self.layers[layer]
        h = h + self.attention(lyr.input_layernorm(h), layer, tuple(range(self.attn_units)), cache, rope)
        return h + self.ffn(lyr.post_attention_layernorm(h), layer, tuple(range(self.ffn_chunks)))

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(ids.view(1, -1))

    def next_token(self, h: torch.Tensor) -> int:
        """Greedy token after the last position of h [1, S, d]."""
        logits = self.model.lm_head(self.model.model.norm(h[:, -1:]))
        return int(torch.argmax(logits[0, -1]))


# ----------------------------------------------------------------------------- the two sides
Send = Callable[[str, torch.Tensor], torch.Tensor]


def _identity_send(name: str, x: torch.Tensor) -> torch.Tensor:
    return x


def _no_check() -> None:
    pass


class EdgeSession:
    """The edge's share of one request: embedding, layers < b, its units of layer b, their KV caches."""

    def __init__(self, sm: SplitModel, plan: Plan, record: bool = False):
        self.sm, self.plan = sm, plan
        self.caches = [KV() for _ in range(sm.n_layers)]
        self.pos = 0
        # a conversation keeps each layer's input for the positions this side saw (a later recompute's source)
        self.hidden = [Hidden() for _ in range(sm.n_layers)] if record else None
        self._h1_pending: torch.Tensor | None = None

    def _record(self, layer: int, h: torch.Tensor, start: int) -> None:
        if self.hidden is not None and layer < self.sm.n_layers:
            self.hidden[layer].record(start, h)

    @torch.inference_mode()
    def up(self, ids: Sequence[int]) -> dict[str, torch.Tensor]:
        """Phase 0 of a step over new token ids: what crosses up (names as Plan.up_names(0)).
        Edge-only plans return {"token": ...} with the next token computed locally."""
        sm, p = self.sm, self.plan
        if p.mode == "cloud_only":
            self.pos += len(ids)
            return {"ids": torch.as_tensor(list(ids), dtype=torch.long)}
        h = sm.embed(torch.as_tensor(list(ids), dtype=torch.long))
        rope = sm.rope(h, self.pos)
        self._rope = rope
        start, self.pos = self.pos, self.pos + h.shape[1]
        for layer in range(min(p.boundary, sm.n_layers)):
            self._record(layer, h, start)
            h = sm.full_layer(h, layer, self.caches[layer], rope)
        self._record(p.boundary, h, start)          # the boundary's input: this side made it
        if p.mode == "edge_only":
            return {"token": torch.tensor([sm.next_token(h)])}
        b = p.boundary
        lyr = sm.layers[b]
        out: dict[str, torch.Tensor] = {}
        pa = sm.attention(lyr.input_layernorm(h), b, p.edge_attn, self.caches[b], rope) if p.edge_attn else None
        if p.cloud_attn:
            out["h"] = h
            if pa is not None:
                out["pa"] = pa
            return out
        h1 = h + pa
        if not p.cloud_ffn:
            out["h"] = h1 + sm.ffn(lyr.post_attention_layernorm(h1), b, p.edge_ffn)
        elif p.edge_ffn:
            out["h"], out["pf"] = h1, sm.ffn(lyr.post_attention_layernorm(h1), b, p.edge_ffn)
        else:
            out["h"] = h1
        return out

    @torch.inference_mode()
    def down(self, h1: torch.Tensor) -> dict[str, torch.Tensor]:
        """Phase 1 (Plan.needs_down): the hidden state after layer b's attention came down; the edge
        FFN chunks' partial sum goes up."""
        b = self.plan.boundary
        return {"pf": self.sm.ffn(self.sm.layers[b].post_attention_layernorm(h1), b, self.plan.edge_ffn)}


class CloudSession:
    """The cloud's share of one request: its units of layer b, layers > b, the head, their KV caches."""

    def __init__(self, sm: SplitModel, plan: Plan, record: bool = False):
        self.sm, self.plan = sm, plan
        self.caches = [KV() for _ in range(sm.n_layers)]
        self.pos = 0
        self.hidden = [Hidden() for _ in range(sm.n_layers)] if record else None
        self._state: tuple | None = None

    _record = EdgeSession._record

    @torch.inference_mode()
    def step(self, up: dict[str, torch.Tensor], send_down: Send | None = None,
             receive_up: Callable[[], dict[str, torch.Tensor]] | None = None,
             check: Callable[[], None] | None = None) -> int:
        """One step from the phase-0 uplink tensors to the next token. When the plan needs the hidden
        state sent down mid-layer, `send_down("h1", h1)` is called and `receive_up()` must return
        {"pf": ...}; in replay, "pf" is already in `up`. `check()` runs before each full layer and
        may raise to stop a step that is cancelled or past its deadline (the session is then unusable)."""
        sm, p = self.sm, self.plan
        check = check or _no_check
        if p.mode == "cloud_only":
            h = sm.embed(up["ids"])
            rope = sm.rope(h, self.pos)
            start, self.pos = self.pos, self.pos + h.shape[1]
            for layer in range(sm.n_layers):
                check()
                self._record(layer, h, start)
                h = sm.full_layer(h, layer, self.caches[layer], rope)
            return sm.next_token(h)
        h = up["h"]
        rope = sm.rope(h, self.pos)
        start, self.pos = self.pos, self.pos + h.shape[1]
        b = p.boundary
        lyr = sm.layers[b]
        if p.cloud_attn:
            self._record(b, h, start)              # "h" is layer b's input when the cloud runs attention there
            h1 = h + sm.attention(lyr.input_layernorm(h), b, p.cloud_attn, self.caches[b], rope)
            if "pa" in up:
                h1 = h1 + up["pa"]
            if p.edge_ffn and "pf" not in up:
                send_down("h1", h1)
                up = {**up, **receive_up()}
            h2 = h1 + sm.ffn(lyr.post_attention_layernorm(h1), b, p.cloud_ffn) if p.cloud_ffn else h1
            if p.edge_ffn:
                h2 = h2 + up["pf"]
        elif p.cloud_ffn:
            h2 = h + sm.ffn(lyr.post_attention_layernorm(h), b, p.cloud_ffn)
            if "pf" in up:
                h2 = h2 + up["pf"]
        else:
            h2 = h
        for layer in range(b + 1, sm.n_layers):
            check()
            self._record(layer, h2, start)
            h2 = sm.full_layer(h2, layer, self.caches[layer], rope)
        return sm.next_token(h2)

    def replay(self, history: Sequence[dict[str, torch.Tensor]]) -> None:
        """Rebuild the caches from the uplink tensors of earlier steps (the edge's partition
        checkpoint), concatenated along tokens into one pass."""
        if not history:
            return
        merged = {k: torch.cat([step[k] for step in history], dim=1) for k in history[0]}
        self.step(merged)


def step_in_process(edge: EdgeSession, cloud: CloudSession, ids: Sequence[int], send: Send = _identity_send) -> int:
    """One step with both sides in one process; `send` is applied to every crossing (e.g. quantise)."""
    up = edge.up(ids)
    if "token" in up:
        return int(up["token"][0])
    if "ids" in up:
        return cloud.step(up)
    up = {k: send(k, v) for k, v in up.items()}
    return cloud.step(up, send_down=lambda name, h1: setattr(edge, "_h1", send(name, h1)),
                      receive_up=lambda: {k: send(k, v) for k, v in edge.down(edge._h1).items()})


def generate_split(sm: SplitModel, plan: Plan, prompt: Sequence[int], max_new: int, send: Send = _identity_send,
                   eos: int | None = None) -> list[int]:
    """Greedy generation of the split model in one process (the reference of the runtime)."""
    edge, cloud = EdgeSession(sm, plan), CloudSession(sm, plan)
    tokens: list[int] = []
    ids = list(prompt)
    for _ in range(max_new):
        tok = step_in_process(edge, cloud, ids, send)
        tokens.append(tok)
        if eos is not None and tok == eos:
            break
        ids = [tok]
    return tokens
