"""What a request may ask of the cloud's model, checked before any compute.

Each check raises a FrameError whose one-word reason names what was wrong (it is the first word of
the ERROR frame the peer gets, and a counter on the server):

    plan       the partition integers (count, boundary range, format, units; an edge-only plan)
    limit      max_new, rows in one step, or positions beyond the model's context
    tokens     token ids outside the vocabulary
    dtype      a crossing not in the plan's transmission format, or ids not i32
    shape      an activation not [1, tokens, hidden size], or rows that disagree within a step
    nonfinite  NaN or Inf in an activation
"""

from __future__ import annotations

import torch

from splitrl.runtime import protocol as P
from splitrl.runtime.limits import Limits
from splitrl.runtime.split_model import Plan, SplitModel


def max_positions(sm: SplitModel, limits: Limits) -> int:
    model_max = int(getattr(sm.model.config, "max_position_embeddings", 0) or 0)
    if limits.max_positions is None:
        return model_max or 2048
    return min(limits.max_positions, model_max) if model_max else limits.max_positions


def _vector(f: P.Frame, what: str) -> list[int]:
    if f.dtype != P.DType.I32 or len(f.shape) != 1:
        raise P.FrameError("dtype", f"{what} is i32[n]; got {f.dtype.name} of shape {f.shape}")
    return f.array().tolist()


def open_request(f: P.Frame, sm: SplitModel, limits: Limits) -> tuple[Plan, int]:
    """(plan, max_new) from an OPEN frame: [boundary, format, units..., max_new]."""
    values = _vector(f, "OPEN")
    if len(values) != 3 + sm.n_units:
        raise P.FrameError("plan", f"OPEN carries {3 + sm.n_units} integers (boundary, format, {sm.n_units} units, "
                                   f"max_new); got {len(values)}")
    try:
        plan = Plan.from_ints(values[:-1], sm.n_layers, sm.attn_units, sm.n_units)
    except ValueError as e:
        raise P.FrameError("plan", str(e)) from e
    if plan.mode == "edge_only":
        raise P.FrameError("plan", f"boundary {plan.boundary} = L is edge-only: nothing runs on the cloud")
    max_new = values[-1]
    if not 1 <= max_new <= limits.max_new:
        raise P.FrameError("limit", f"max_new = {max_new}: must be in 1..{limits.max_new} (the cloud's --max-new)")
    return plan, max_new


def token_ids(f: P.Frame, sm: SplitModel, limits: Limits, room: int) -> torch.Tensor:
    """The ids of an IDS frame; `room` is how many positions the request may still use."""
    ids = _vector(f, "IDS")
    if not 1 <= len(ids) <= limits.max_rows:
        raise P.FrameError("limit", f"{len(ids)} token ids in one step: must be in 1..{limits.max_rows} "
                                    "(the cloud's --max-rows)")
    if len(ids) > room:
        raise P.FrameError("limit", f"{len(ids)} tokens exceed the {room} positions left in the model's context")
    vocab = int(sm.model.config.vocab_size)
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise P.FrameError("tokens", f"{len(bad)} token ids outside 0..{vocab - 1} (first: {bad[0]})")
    return torch.tensor(ids, dtype=torch.long)


def activation(f: P.Frame, sm: SplitModel, fmt: str, rows: int | None, room: int, max_rows: int) -> torch.Tensor:
    """The float tensor of an UP_* frame: [1, n, d_model] in the plan's format, n == rows when the
    step already fixed it, n <= max_rows and <= room, every value finite."""
    if f.dtype != P.ACT_DTYPES[fmt]:
        raise P.FrameError("dtype", f"this request's crossings are {P.ACT_DTYPES[fmt].name}; got {f.dtype.name}")
    d = sm.d_model
    if len(f.shape) != 3 or f.shape[0] != 1 or f.shape[2] != d:
        raise P.FrameError("shape", f"activation shape {f.shape}: must be [1, tokens, {d}] (the model's hidden size)")
    n = f.shape[1]
    if rows is not None and n != rows:
        raise P.FrameError("shape", f"{n} rows where this step has {rows}")
    if n > max_rows:
        raise P.FrameError("limit", f"{n} rows in one step: at most {max_rows} (the cloud's --max-rows)")
    if n > room:
        raise P.FrameError("limit", f"{n} tokens exceed the {room} positions left in the model's context")
    x = f.activation()
    if not bool(torch.isfinite(x).all()):
        raise P.FrameError("nonfinite", f"{int((~torch.isfinite(x)).sum())} NaN/Inf values in a {P.UP_NAMES.get(f.kind, f.kind.name)} crossing")
    return x


# ----------------------------------------------------------------------------- conversations
def _i64(f: P.Frame, what: str) -> list[int]:
    if f.dtype != P.DType.I64 or len(f.shape) != 1:
        raise P.FrameError("dtype", f"{what} is i64[n]; got {f.dtype.name} of shape {f.shape}")
    return f.array().tolist()


def _plan(values: list[int], sm: SplitModel) -> Plan:
    try:
        return Plan.from_ints(values, sm.n_layers, sm.attn_units, sm.n_units)
    except ValueError as e:
        raise P.FrameError("plan", str(e)) from e


def _positions(ctx: int, sm: SplitModel, limits: Limits) -> int:
    if not 0 <= ctx <= max_positions(sm, limits):
        raise P.FrameError("limit", f"{ctx} positions held: must be in 0..{max_positions(sm, limits)} (the context)")
    return ctx


def turn_request(f: P.Frame, sm: SplitModel, limits: Limits) -> tuple[int, int, Plan, int]:
    """(conversation, positions held, plan, max_new) from a TURN frame."""
    values = _i64(f, "TURN")
    if len(values) != 5 + sm.n_units:
        raise P.FrameError("plan", f"TURN carries {5 + sm.n_units} integers (conversation, positions, boundary, "
                                   f"format, {sm.n_units} units, max_new); got {len(values)}")
    conv, ctx = values[0], _positions(values[1], sm, limits)
    plan, max_new = _plan(values[2:-1], sm), values[-1]
    if plan.mode == "edge_only":
        raise P.FrameError("plan", f"boundary {plan.boundary} = L is edge-only: nothing runs on the cloud")
    if not 1 <= max_new <= limits.max_new:
        raise P.FrameError("limit", f"max_new = {max_new}: must be in 1..{limits.max_new} (the cloud's --max-new)")
    if ctx + max_new > max_positions(sm, limits):
        raise P.FrameError("limit", f"{ctx} positions held + {max_new} new exceed the model's context")
    return conv, ctx, plan, max_new


def migrate_request(f: P.Frame, sm: SplitModel, limits: Limits) -> tuple[int, str, Plan, Plan]:
    """(positions, "kv" | "recompute", old plan, new plan) from a MIGRATE frame."""
    values = _i64(f, "MIGRATE")
    n = 2 + sm.n_units
    if len(values) != 2 + 2 * n:
        raise P.FrameError("plan", f"MIGRATE carries {2 + 2 * n} integers (positions, how, two plans); got {len(values)}")
    ctx = _positions(values[0], sm, limits)
    if values[1] not in (0, 1):
        raise P.FrameError("plan", f"MIGRATE how = {values[1]}: 0 (K/V) or 1 (recompute)")
    old, new = _plan(values[2:2 + n], sm), _plan(values[2 + n:], sm)
    from splitrl.runtime.conversation import moves  # here: conversation.py checks its frames with this module
    ms = moves(old, new)
    if not ms or ctx == 0:
        raise P.FrameError("plan", "MIGRATE with nothing to move (the same placement, or no positions)")
    if values[1] == 1 and len({m.to_edge for m in ms}) > 1:
        raise P.FrameError("plan", "a recompute moves caches one way; these plans move some each way (use K/V)")
    return ctx, ("kv", "recompute")[values[1]], old, new


def kv_move(f: P.Frame, sm: SplitModel, conv: int, move, ctx: int) -> torch.Tensor:
    """The [2, heads, ctx, head_dim] K/V of a KV_MOVE frame for `move` (fp16, finite)."""
    heads = len(move.units) * (sm.n_kv // sm.attn_units)
    want = (2, heads, ctx, sm.head_dim)
    if f.kind != P.Kind.KV_MOVE or f.request_id != conv or f.seq != move.layer:
        raise P.FrameError("unexpected", f"{f.kind.name} seq {f.seq} where KV_MOVE of layer {move.layer} belongs")
    if f.dtype != P.DType.FP16 or tuple(f.shape) != want:
        raise P.FrameError("shape", f"KV_MOVE of layer {move.layer}: fp16 {want}; got {f.dtype.name} {f.shape}")
    x = f.activation()
    if not bool(torch.isfinite(x).all()):
        raise P.FrameError("nonfinite", f"NaN/Inf in the K/V of layer {move.layer}")
    return x


def hidden_run(f: P.Frame, sm: SplitModel, conv: int, fmt: str, ctx: int) -> tuple[int, torch.Tensor]:
    """(start, [1, n, d]) of a HID_MOVE frame: a moved layer's input over positions start..start+n <= ctx."""
    if f.request_id != conv:
        raise P.FrameError("unexpected", f"HID_MOVE of conversation {f.request_id} inside conversation {conv}")
    x = activation(f, sm, fmt, None, ctx - f.seq if f.seq < ctx else 0, ctx)
    return f.seq, x
