"""The real runtime under a fleet: `--edges` edge processes drive one `splitrl-cloud` process at once on
loopback, and each request's measured latency stands beside what the fleet simulator predicts for the
same load (docs/fleet.md, "The real runtime under a fleet", shows a run).

    PYTHONPATH=. .venv/bin/python scripts/fleet_loopback.py [--edges 8] [--rates 0.4 1.2] [--duration 40]
    PYTHONPATH=. .venv/bin/python scripts/fleet_loopback.py report --out DIR     # the tables again from DIR/rows.jsonl

For each plan and fleet rate (requests/s over all edges), every edge draws Poisson arrivals at rate / edges
for `--duration` s and serves them one after another, each a random prompt of `--prompt-len` tokens and
`--max-new` new tokens. Measured per request: the latency from sending it to its last token, and the
cloud's compute and its wait for the model as the cloud's TOKEN frames report them. Predicted per request:

* on an idle cloud, the calibrated simulator (`splitrl.runtime.calibrate.predict_rows` with
  docs/harness_measure/grid/calibration.json, the cloud's table this host's, the link loopback);
* plus the wait W_t / C of the fleet's cloud queue (`splitrl.env.fleet.serve_cloud`, docs/fleet.md "The
  cloud"), fed with each request's measured cloud compute in the slot in which it reached the cloud, C = 1
  and no batching (the runtime runs one forward at a time, so a request's work is all its compute).

Each edge and the cloud run 1 torch thread; the model is the embedded SmolLM2-135M (nothing downloads).
`edge` is this script's worker mode: the parent starts it once per edge and sends it one JSON command per
window on stdin; it answers one JSON line of rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

CALIBRATION = Path(__file__).resolve().parents[1] / "docs/harness_measure/grid/calibration.json"
SLOTS_S = (1.0, 0.1)     # the shipped fleets' slot, and a finer one (how much the fluid slot hides)


# ----------------------------------------------------------------------------- an edge process
def poisson_arrivals(rng: np.random.Generator, rate: float, duration: float) -> np.ndarray:
    gaps = rng.exponential(1.0 / rate, size=int(rate * duration * 3) + 10)
    times = np.cumsum(gaps)
    return times[times < duration]


def run_window(client, plan, cmd: dict, rng: np.random.Generator, rids, prompt_len: int, max_new: int) -> list[dict]:
    """Serve this edge's arrivals of one window in order; a request waits on its edge while the last one runs."""
    from splitrl.runtime.edge import Request
    rows = []
    for arrival in poisson_arrivals(rng, cmd["rate"], cmd["duration"]):
        time.sleep(max(0.0, cmd["start_at"] + arrival - time.time()))
        sent = time.time() - cmd["start_at"]
        prompt = tuple(rng.integers(100, 20000, prompt_len).tolist())
        res = client.generate(Request(next(rids), prompt, max_new), plan)
        rows.append({"arrival": float(arrival), "sent": sent, "latency_s": res.latency_s, "output": len(res.tokens),
                     "cloud_s": res.cloud_s, "cloud_wait_s": res.cloud_wait_s, "retries": res.retries,
                     "status": res.status})
    return rows


def edge_main(a) -> int:
    import torch

    from splitrl.lm.model import load_causal_lm
    from splitrl.runtime.edge import EdgeClient, Request
    from splitrl.runtime.edge_cli import parse_plan
    from splitrl.runtime.split_model import SplitModel
    torch.set_num_threads(1)
    sm = SplitModel(load_causal_lm(None).model)
    plans = {p: parse_plan(p, sm) for p in a.plans}
    client = EdgeClient(sm, [("127.0.0.1", a.port)], timeout=600, fallback="none")
    rng, rids = np.random.default_rng(a.seed), itertools.count()
    for plan in plans.values():            # first-use costs (allocations, weight slices) are not the load's
        client.generate(Request(next(rids), (1, 2, 3, 4), 2), plan)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        rows = run_window(client, plans[cmd["plan"]], cmd, rng, rids, a.prompt_len, a.max_new)
        print(json.dumps(rows), flush=True)
    client.close()
    return 0


# ----------------------------------------------------------------------------- the prediction
def predicted_waits(sent: np.ndarray, work: np.ndarray, slot_s: float, replicas: int = 1) -> np.ndarray:
    """Each request's wait W_t / C in the fleet's cloud queue, W fed slot by slot with the work of the
    requests that reached the cloud in that slot (splitrl.env.fleet.serve_cloud: the env's own equation)."""
    from splitrl.env.fleet import serve_cloud
    cloud = SimpleNamespace(slot_s=slot_s, cloud=SimpleNamespace(replicas=replicas, wait_ref_s=1.0))  # what it reads
    slots = np.floor(np.asarray(sent) / slot_s).astype(int)
    arrivals = np.bincount(slots, weights=work, minlength=slots.max() + 1)
    queue, w = [], 0.0
    for a in arrivals:
        queue.append(w)
        w = float(serve_cloud(cloud, w, float(a), 0.0)["work"])
    return np.asarray(queue)[slots] / replicas


def idle_latency(plans: list[str], prompt_len: int, outputs: list[int], mbps: float, rtt_ms: float) -> np.ndarray:
    """The calibrated simulator's latency of each request on an idle cloud (the sim-to-real calibration path)."""
    from splitrl.runtime.calibrate import load_calibration, predict_rows
    from splitrl.runtime.measure import simulator
    _, params = simulator("default")
    rows = [{"plan": p, "prompt": prompt_len, "output": n, "mbps": mbps, "rtt_ms": rtt_ms, "loss": 0.0}
            for p, n in zip(plans, outputs, strict=True)]
    return predict_rows(params, rows, load_calibration(CALIBRATION))


# ----------------------------------------------------------------------------- the parent
def start_cloud(log: Path) -> tuple[subprocess.Popen, int]:
    # an edge may sit idle between its requests for longer than the default 30 s read timeout: not a fault here
    cloud = subprocess.Popen([sys.executable, "-m", "splitrl.runtime.cloud_cli", "--insecure-no-auth", "--port", "0",
                              "--threads", "1", "--read-timeout", "600"], stdout=subprocess.PIPE, stderr=log.open("w"),
                             text=True)
    for line in cloud.stdout:
        m = re.search(r"serving .* on [\d.]+:(\d+)", line)
        if m:
            return cloud, int(m.group(1))
    raise RuntimeError(f"splitrl-cloud exited before serving; see {log}")


def start_edges(a, port: int, out: Path) -> list[subprocess.Popen]:
    edges = [subprocess.Popen([sys.executable, __file__, "edge", "--port", str(port), "--seed", str(a.seed + i),
                               "--prompt-len", str(a.prompt_len), "--max-new", str(a.max_new), "--plans", *a.plans],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=(out / f"edge{i}.log").open("w"),
                              text=True) for i in range(a.edges)]
    for i, e in enumerate(edges):
        if e.stdout.readline().strip() != "ready":
            raise RuntimeError(f"edge {i} did not start; see {out / f'edge{i}.log'}")
    return edges


def run_condition(edges, plan: str, rate: float, duration: float) -> list[dict]:
    cmd = {"plan": plan, "rate": rate / len(edges), "duration": duration, "start_at": time.time() + 1.0}
    for e in edges:
        e.stdin.write(json.dumps(cmd) + "\n")
        e.stdin.flush()
    rows = []
    for i, e in enumerate(edges):
        rows += [{"edge": i, "plan": plan, "rate": rate, **r} for r in json.loads(e.stdout.readline())]
    return rows


def summarise(rows: list[dict], a) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    sent, work = np.array([r["sent"] for r in ok]), np.array([r["cloud_s"] for r in ok])
    lat, wait = np.array([r["latency_s"] for r in ok]), np.array([r["cloud_wait_s"] for r in ok])
    idle = idle_latency([r["plan"] for r in ok], a.prompt_len, [r["output"] for r in ok], a.link_mbps, a.link_rtt_ms)
    pred = {s: predicted_waits(sent, work, s) for s in SLOTS_S}
    service = lat - wait            # the request's measured latency without the wait the cloud reported
    span = max(r["sent"] + r["latency_s"] for r in ok) - min(sent)
    pct = lambda x, q: float(np.percentile(x, q))  # noqa: E731
    return {"plan": rows[0]["plan"], "rate": rows[0]["rate"], "requests": len(rows), "failed": len(rows) - len(ok),
            "retried": sum(r.get("retries", 0) > 0 for r in rows),
            "util": float(work.sum() / span), "cloud_s": float(work.mean()), "idle_pred_s": float(idle.mean()),
            "lat_p50": pct(lat, 50), "lat_p95": pct(lat, 95),
            "pred_p50": pct(idle + pred[1.0], 50), "pred_p95": pct(idle + pred[1.0], 95),
            "queue_p50": pct(service + pred[1.0], 50), "queue_p95": pct(service + pred[1.0], 95),
            "wait_mean": float(wait.mean()), "wait_p95": pct(wait, 95),
            **{f"pred_wait_mean_{s:g}": float(p.mean()) for s, p in pred.items()},
            **{f"pred_wait_p95_{s:g}": pct(p, 95) for s, p in pred.items()}}


def table(summaries: list[dict]) -> str:
    lines = ["| plan | fleet rate (req/s) | requests | cloud util | cloud compute / request (s) | idle latency, "
             "calibrated sim (s) | latency p50 / p95 measured (s) | predicted: calibrated sim + queue wait (s) | "
             "predicted: measured service + queue wait (s) | cloud wait mean / p95 measured (s) | cloud wait mean / "
             "p95 predicted, 1 s slots (s) | the same, 0.1 s slots (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        notes = [f"{s[k]} {k}" for k in ("failed", "retried") if s.get(k)]
        lines.append(f"| {s['plan']} | {s['rate']:g} | {s['requests']}" + (f" ({', '.join(notes)})" if notes else "")
                     + f" | {s['util']:.2f} | {s['cloud_s']:.3f} | {s['idle_pred_s']:.3f} | {s['lat_p50']:.2f} / "
                     f"{s['lat_p95']:.2f} | {s['pred_p50']:.2f} / {s['pred_p95']:.2f} | {s['queue_p50']:.2f} / "
                     f"{s['queue_p95']:.2f} | {s['wait_mean']:.2f} / "
                     f"{s['wait_p95']:.2f} | {s['pred_wait_mean_1']:.2f} / {s['pred_wait_p95_1']:.2f} | "
                     f"{s['pred_wait_mean_0.1']:.2f} / {s['pred_wait_p95_0.1']:.2f} |")
    return "\n".join(lines)


def write_report(rows: list[dict], a, out: Path) -> str:
    """summary.json and report.md (one table row per plan and rate, in the order measured)."""
    conditions = dict.fromkeys((r["plan"], r["rate"]) for r in rows)
    summaries = [summarise([r for r in rows if (r["plan"], r["rate"]) == c], a) for c in conditions]
    (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    report = table(summaries)
    (out / "report.md").write_text(report + "\n")
    return report


def measure(a, out: Path) -> list[dict]:
    """Start the cloud and the edges, run every (plan, rate) window, stop them; the rows, also in rows.jsonl."""
    t0 = time.perf_counter()
    cloud, port = start_cloud(out / "cloud.log")
    edges, rows = [], []
    try:
        edges = start_edges(a, port, out)
        print(f"cloud on port {port}, {a.edges} edges ready in {time.perf_counter() - t0:.0f} s", flush=True)
        for plan in a.plans:
            for rate in a.rates:
                cond = run_condition(edges, plan, rate, a.duration)
                rows += cond
                print(table([summarise(cond, a)]).splitlines()[-1], flush=True)
    finally:
        for e in edges:
            e.stdin.close()
            e.wait(timeout=60)
        cloud.terminate()            # SIGTERM: the cloud drains and exits
        cloud.wait(timeout=60)
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def main_parent(a) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.mode == "report":
        rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if line.strip()]
    else:
        rows = measure(a, out)
    print(write_report(rows, a, out))
    print(f"wrote {out}/rows.jsonl, summary.json, report.md in {time.perf_counter() - t0:.0f} s")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", nargs="?", choices=("run", "report", "edge"), default="run",
                    help="report: the tables again from --out's rows.jsonl; edge: the worker (internal)")
    ap.add_argument("--edges", type=int, default=8)
    ap.add_argument("--plans", nargs="+", default=["0,fp16,0000000", "8,fp16,0000000"],
                    help="b,fmt,units: cloud-only and a layer split (8 of 30 layers on the edge)")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.4, 1.2], help="fleet requests/s, all edges together")
    ap.add_argument("--duration", type=float, default=40.0, help="seconds of arrivals per (plan, rate)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--max-new", type=int, default=8)
    ap.add_argument("--link-mbps", type=float, default=10000.0, help="loopback as the simulator sees it")
    ap.add_argument("--link-rtt-ms", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=0, help="edge mode: the cloud's port")
    ap.add_argument("--out", default="outputs/fleet_loopback")
    return ap


def check(a) -> None:
    for name in ("edges", "prompt_len", "max_new"):
        if getattr(a, name) < 1:
            raise SystemExit(f"fleet_loopback: --{name.replace('_', '-')} {getattr(a, name)}: must be >= 1")
    if a.duration <= 0 or min(a.rates) <= 0:
        raise SystemExit(f"fleet_loopback: --duration {a.duration} and --rates {a.rates} must be > 0")


if __name__ == "__main__":
    args = parser().parse_args()
    check(args)
    sys.exit(edge_main(args) if args.mode == "edge" else main_parent(args))
