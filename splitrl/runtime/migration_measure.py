"""`splitrl-harness migrate`: a conversation's cache moving between the edge and the cloud, measured on
loopback under a shaped link (`LinkProxy`) beside the simulator's price for the same move
(splitrl/env/sessions.py `migration`, with the scenario's cost tables switched to this host as in
`splitrl-harness measure`).

For each context length and each change of plan it runs a two-turn chat (turn 1 fills the caches under
the old plan; turn 2 moves them to the new plan) once per way of moving (K/V, recompute), and records
the measured seconds from MIGRATE to the cloud's OK, the bytes that crossed, and the env's expected
seconds for that way. Writes migrate.jsonl and report.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEFAULT_MOVES = ("30,fp16,0000000->15,fp16,0000000", "15,fp16,0000000->30,fp16,0000000",
                 "20,fp16,0000000->8,fp16,0000000")


def env_price(env_params, old, new, ctx: int, bw: float, rtt: float) -> dict:
    """The simulator's seconds for each way of this move (loss-free) and its choice."""
    import jax.numpy as jnp

    from splitrl.env.cost import _lookup
    from splitrl.env.sessions import migration
    from splitrl.env.tables import decode_model_row
    from splitrl.env.types import Conditions
    from splitrl.profiles.formats import TX_FORMATS
    from splitrl.runtime.conversation import split_point
    model = decode_model_row(_lookup(env_params, 0, jnp.float32(ctx + 1), jnp.float32(ctx + 1))[1])
    cond = Conditions(bw=jnp.float32(bw), rtt=jnp.float32(rtt), loss_p=jnp.float32(0.0), snr_db=jnp.float32(30.0),
                      cloud_load=jnp.float32(0.0), cloud_wait=jnp.float32(0.0), connected=jnp.float32(1.0),
                      reconnect=jnp.float32(0.0), ctx=jnp.float32(ctx), kv_split=jnp.float32(split_point(old)))
    m = migration(env_params, jnp.int32(new.boundary), jnp.int32(TX_FORMATS.index(new.fmt)),
                  jnp.asarray(new.units, jnp.float32), model, cond)
    return {"kv": float(m["kv_s"]), "recompute": float(m["recompute_s"]), "chosen_s": float(m["time"])}


def measure(sm, moves, contexts, mbps: float, rtt_ms: float, env_params, repeats: int = 1, seed: int = 0) -> list[dict]:
    from splitrl.runtime import conversation as C
    from splitrl.runtime.chat import EdgeChat
    from splitrl.runtime.cloud import CloudServer
    from splitrl.runtime.edge import EdgeClient
    from splitrl.runtime.faults import LinkProxy
    from splitrl.runtime.limits import Limits
    bw, rtt = mbps * 1e6 / 8, rtt_ms / 1e3
    rng = np.random.default_rng(seed)
    cloud = CloudServer(sm, insecure_no_auth=True, limits=Limits(read_s=300, step_s=300)).start()
    rows = []
    try:
        with LinkProxy((cloud.host, cloud.port), bandwidth=bw, rtt_s=rtt) as proxy:
            client = EdgeClient(sm, [proxy.address], timeout=300, fallback="none")
            prices = C.Prices.of(sm, 1e-3, 1e-3)          # unused: every move here is forced one way
            for ctx in contexts:
                for old, new in moves:
                    price = env_price(env_params, old, new, ctx, bw, rtt)
                    for how in ("kv", "recompute") * repeats:
                        chat = EdgeChat(client, prices, force=how)
                        chat.turn(rng.integers(100, 20000, ctx).tolist(), old, 1)   # ctx positions fed
                        chat.turn([int(rng.integers(100, 20000))], new, 1)
                        m = chat.migrations[-1]
                        rows.append({"move": f"{old.boundary}->{new.boundary}", "ctx": ctx, "how": how,
                                     "layers": m.layers, "bytes": m.nbytes, "measured_s": m.seconds,
                                     "predicted_s": price[how], "env_choice_s": price["chosen_s"]})
                        chat.forget()
            client.close()
    finally:
        cloud.stop()
    return rows


def report(rows: list[dict], out: Path, mbps: float, rtt_ms: float, command: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "migrate.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [f"# A conversation's cache moving: measured vs the simulator ({mbps} Mbit/s, RTT {rtt_ms} ms, "
             "loopback shaped by LinkProxy)", "", f"`{command}`", "",
             "| move (b) | context | how | layers | bytes | measured s | predicted s | ratio |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['move']} | {r['ctx']} | {r['how']} | {r['layers']:.0f} | {r['bytes']:,} | "
                     f"{r['measured_s']:.3f} | {r['predicted_s']:.3f} | {r['measured_s'] / r['predicted_s']:.2f} |")
    for how in ("kv", "recompute"):
        ratio = np.array([r["measured_s"] / r["predicted_s"] for r in rows if r["how"] == how])
        if ratio.size:
            lines.append(f"\n{how}: measured / predicted median {np.median(ratio):.2f} (range {ratio.min():.2f}-"
                         f"{ratio.max():.2f}, {ratio.size} moves)")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def run(a, command: str) -> int:
    import time

    import torch

    from splitrl.lm.model import load_causal_lm
    from splitrl.runtime.edge_cli import parse_plan
    from splitrl.runtime.measure import simulator
    from splitrl.runtime.split_model import SplitModel
    torch.set_num_threads(a.threads)
    sm = SplitModel(load_causal_lm(a.model).model)
    moves = []
    for spec in a.move or DEFAULT_MOVES:
        old, _, new = spec.partition("->")
        moves.append((parse_plan(old, sm), parse_plan(new, sm)))
    _, env_params = simulator(a.scenario)
    t0 = time.perf_counter()
    rows = measure(sm, moves, a.ctx, a.mbps, a.rtt_ms, env_params, a.repeats, a.seed)
    path = report(rows, Path(a.out), a.mbps, a.rtt_ms, command)
    print(path.read_text())
    print(f"wrote {path}, {path.parent / 'migrate.jsonl'} in {time.perf_counter() - t0:.0f} s")
    return 0
