"""The sim-to-real grid: every (uplink, RTT, loss) link cell x partition x repeat, measured through
`LinkProxy` beside the simulator's prediction, one JSON row per request appended as it is measured.

Order: repeat by repeat, the link cells shuffled (seeded) within each repeat and the plans within a
cell, so that a slow spell of the host lands on different cells in different repeats instead of on
one cell's every repeat (the repeats are what the calibration holds out). Each cell's connection is
made (handshake, PING) before its first request: the env prices a request on a live link. The
measured latency is to the request's last token (`Result.latency_s`; CLOSE's round trip is not part
of the answer). A rerun with the same output file skips the rows it
already has, so an interrupted grid resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

GRID_MBPS = (1.0, 5.0, 20.0, 50.0)
GRID_RTT_MS = (10.0, 40.0, 120.0)
GRID_LOSS = (0.0, 0.01)
# cloud-only, edge-only, a layer split, a head-level split (2 of 3 attention units and 2 of 4 FFN
# chunks on the edge: every crossing kind), attention on the edge with the FFN on the cloud
GRID_PLANS = ("0,fp16,0000000", "30,fp16,0000000", "8,fp16,0000000", "15,int8,1010110", "22,int4,1111000")


@dataclasses.dataclass(frozen=True)
class Cell:
    mbps: float
    rtt_ms: float
    loss: float

    @property
    def name(self) -> str:
        return f"{self.mbps:g}Mb/{self.rtt_ms:g}ms/{100 * self.loss:g}%"


def cells(mbps: Sequence[float] = GRID_MBPS, rtt_ms: Sequence[float] = GRID_RTT_MS,
          loss: Sequence[float] = GRID_LOSS) -> list[Cell]:
    return [Cell(m, r, p) for p in loss for r in rtt_ms for m in mbps]


def plan_text(plan) -> str:
    return f"{plan.boundary},{plan.fmt},{''.join(map(str, plan.units))}"


def row_key(row: dict) -> tuple:
    return (row["mbps"], row["rtt_ms"], row["loss"], row["plan"], row["repeat"])


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_grid(sm, plans, prompt: Sequence[int], max_new: int, grid: Sequence[Cell], repeats: int,
             predict: Callable, out: Path, seed: int = 0, log: Callable[[str], None] = print) -> list[dict]:
    """Measure every (cell, plan, repeat) not yet in `out` (a jsonl file); return all rows."""
    from splitrl.runtime.cloud import CloudServer
    from splitrl.runtime.edge import EdgeClient, Request
    from splitrl.runtime.faults import LinkProxy
    from splitrl.runtime.limits import Limits
    done = {row_key(r) for r in read_rows(out)}
    cloud = CloudServer(sm, insecure_no_auth=True, limits=Limits(read_s=300, step_s=300)).start()
    rid = 0
    try:
        with LinkProxy((cloud.host, cloud.port)) as proxy:     # warm-up: first-use costs are not the link's
            client = EdgeClient(sm, [proxy.address], timeout=300, fallback="none")
            for plan in plans:
                rid += 1
                client.generate(Request(rid, tuple(prompt), max_new), plan)
            client.close()
        with out.open("a") as f:
            for repeat in range(repeats):
                order = list(grid)
                random.Random(seed + repeat).shuffle(order)
                for cell in order:
                    todo = [p for p in plans if (cell.mbps, cell.rtt_ms, cell.loss, plan_text(p), repeat) not in done]
                    if not todo:
                        continue
                    t0 = time.perf_counter()
                    bw = cell.mbps * 1e6 / 8
                    cell_seed = zlib.crc32(f"{seed}/{repeat}/{cell.name}".encode())
                    random.Random(cell_seed).shuffle(todo)
                    with LinkProxy((cloud.host, cloud.port), bandwidth=bw, rtt_s=cell.rtt_ms / 1e3, loss=cell.loss,
                                   seed=cell_seed) as proxy:
                        client = EdgeClient(sm, [proxy.address], timeout=300, fallback="none")
                        client.links[0].connect()     # a request on a live connection, as the env prices it
                        for plan in todo:
                            rid += 1
                            lost0 = sum(proxy.lost_segments.values())
                            res = client.generate(Request(rid, tuple(prompt), max_new), plan)
                            row = {"mbps": cell.mbps, "rtt_ms": cell.rtt_ms, "loss": cell.loss, "plan": plan_text(plan),
                                   "mode": plan.mode, "repeat": repeat, "prompt": len(prompt), "output": len(res.tokens),
                                   "measured_s": res.latency_s,
                                   "predicted_s": predict(plan, len(prompt), len(res.tokens), bw, cell.rtt_ms / 1e3,
                                                          cell.loss),
                                   "bytes_up": res.bytes_up, "bytes_down": res.bytes_down, "status": res.status,
                                   "retries": res.retries, "lost_segments": sum(proxy.lost_segments.values()) - lost0,
                                   "time": time.time(), "load1": os.getloadavg()[0]}   # a busy host explains outliers
                            f.write(json.dumps(row) + "\n")
                            f.flush()
                        client.close()
                    log(f"repeat {repeat} {cell.name}: {len(todo)} plans in {time.perf_counter() - t0:.1f} s")
    finally:
        cloud.stop()
    return read_rows(out)
