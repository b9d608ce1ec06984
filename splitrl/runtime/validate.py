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
