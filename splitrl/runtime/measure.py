"""`splitrl-harness measure`: real split inference under a shaped link beside the simulator's prediction.

Edge and cloud run in this process (the cloud in a server thread, the edge as the client) over
loopback through `LinkProxy`, which shapes each direction to `--mbps` with `--rtt-ms` and `--loss`
(the user-space stand-in for tc netem). For each request and partition it records the measured
end-to-end latency and what `splitrl.env.cost.request_cost` predicts for the same partition,
prompt/output lengths, bandwidth, RTT and loss, with the scenario's cost tables switched to this host
on both sides (the cloud here is this CPU, not an A100) and no timeout fallback.

    measure            one link: measure.jsonl, report.md (table) and gap.png
    measure --grid     every --mbps x --rtt-ms x --loss cell (default: the issue-17 grid), resumable
                       grid.jsonl, then `calibrate` on it
    calibrate          fit the calibration on grid rows: calibration.json, report.md, heatmap.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from splitrl.profiles.formats import TX_FORMATS

DEFAULT_PLANS = ("0,fp16,0000000", "30,fp16,0000000", "8,fp16,0000000", "8,int8,1010110", "15,int4,1111000",
                 "22,int8,0001111")


def simulator(scenario: str = "default", host_cloud: bool = True):
    """(env, params) of the scenario with the cloud's table replaced by this host's (fp32)."""
    from splitrl.env.scenario import load_scenario_dict, make
    data, _ = load_scenario_dict(scenario)
    data = dict(data)
    if host_cloud:
        data.update(cloud=data["edge"], cloud_weight_format=data["edge_weight_format"])
    data["channel"] = {**data["channel"], "timeout_s": 1e6}     # what it costs, not when the env gives up
    return make(data)


def predict(env_params, plan, prompt_len: int, output_len: int, bw_bytes_s: float, rtt_s: float,
            loss_p: float = 0.0) -> float:
    """The env's latency for a request that returns `output_len` tokens."""
    import jax.numpy as jnp

    from splitrl.env.cost import project_action, request_cost
    from splitrl.env.types import Conditions
    from splitrl.runtime.calibrate import env_output
    b, f, units = project_action(env_params, jnp.int32(plan.boundary), jnp.int32(TX_FORMATS.index(plan.fmt)),
                                 jnp.asarray(plan.units, jnp.int32))
    cond = Conditions(bw=jnp.float32(bw_bytes_s), rtt=jnp.float32(rtt_s), loss_p=jnp.float32(loss_p),
                      snr_db=jnp.float32(30.0), cloud_load=jnp.float32(0.0), cloud_wait=jnp.float32(0.0),
                      connected=jnp.float32(1.0), reconnect=jnp.float32(0.0))   # a dedicated loopback cloud
    m = request_cost(env_params, b, f, units, jnp.float32(prompt_len), jnp.float32(env_output(output_len)), cond)
    return float(m["latency"])


def measure(sm, plans, prompts, max_new: int, mbps: float, rtt_ms: float, env_params, repeats: int = 1) -> list[dict]:
    from splitrl.runtime.cloud import CloudServer
    from splitrl.runtime.edge import EdgeClient, Request
    from splitrl.runtime.faults import LinkProxy
    bw = mbps * 1e6 / 8
    from splitrl.runtime.limits import Limits
    cloud = CloudServer(sm, insecure_no_auth=True, limits=Limits(read_s=120, step_s=120)).start()
    rows = []
    try:
        with LinkProxy((cloud.host, cloud.port), bandwidth=bw, rtt_s=rtt_ms / 1e3) as proxy:
            client = EdgeClient(sm, [proxy.address], timeout=120, fallback="none")
            rid = 0
            for plan in plans:          # warm-up: first-use costs (allocations, weight slicing) are not the link's
                client.generate(Request(10**9 + rid, tuple(prompts[0]), max_new), plan)
                rid += 1
            for plan in plans:
                for prompt in prompts:
                    for _ in range(repeats):
                        res = client.generate(Request(rid, tuple(prompt), max_new), plan)
                        rid += 1
                        rows.append({"plan": f"{plan.boundary},{plan.fmt},{''.join(map(str, plan.units))}",
                                     "mode": plan.mode, "prompt": len(prompt), "output": len(res.tokens),
                                     "measured_s": res.latency_s,
                                     "predicted_s": predict(env_params, plan, len(prompt), len(res.tokens), bw,
                                                            rtt_ms / 1e3),
                                     "bytes_up": res.bytes_up, "bytes_down": res.bytes_down, "status": res.status,
                                     "est_bw_mbps": client.est.bw * 8 / 1e6, "est_rtt_ms": client.est.rtt * 1e3})
            client.close()
    finally:
        cloud.stop()
    return rows


def report(rows: list[dict], out: Path, mbps: float, rtt_ms: float) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out.mkdir(parents=True, exist_ok=True)
    (out / "measure.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [f"# Sim-to-real gap ({mbps} Mbit/s, RTT {rtt_ms} ms, loopback shaped by LinkProxy)", "",
             "| plan (b,fmt,units) | mode | prompt | output | measured s | predicted s | ratio | up B | est. Mbit/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['plan']} | {r['mode']} | {r['prompt']} | {r['output']} | {r['measured_s']:.3f} | "
                     f"{r['predicted_s']:.3f} | {r['measured_s'] / r['predicted_s']:.2f} | {r['bytes_up']} | "
                     f"{r['est_bw_mbps']:.2f} |")
    ratio = np.array([r["measured_s"] / r["predicted_s"] for r in rows])
    err = np.array([abs(r["measured_s"] - r["predicted_s"]) / r["measured_s"] for r in rows])
    lines += ["", f"measured / predicted: median {np.median(ratio):.2f}, range {ratio.min():.2f}-{ratio.max():.2f}; "
              f"mean absolute relative error {100 * err.mean():.0f} %"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 5))
    m, p = [r["measured_s"] for r in rows], [r["predicted_s"] for r in rows]
    for mode in sorted({r["mode"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["mode"] == mode]
        ax.scatter([p[i] for i in idx], [m[i] for i in idx], label=mode)
    lim = [0, max(m + p) * 1.1]
    ax.plot(lim, lim, "k--", lw=1, label="measured = predicted")
    ax.set(xlabel="simulator latency (s)", ylabel="measured latency (s)", title=f"{mbps} Mbit/s, RTT {rtt_ms} ms")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "gap.png", dpi=120)
    plt.close(fig)
    return out / "report.md"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="splitrl-harness", description="Harness tools.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="measured vs simulated end-to-end latency under a shaped link (or a grid)")
    m.add_argument("--model", default=None, help="HF dir or .gguf (default: the embedded SmolLM2)")
    m.add_argument("--scenario", default="default")
    m.add_argument("--plan", action="append", default=None, help="b,fmt,units (repeat); default: a spread of plans")
    m.add_argument("--policy", default=None, help="ONNX policy: its greedy plan at this link is added")
    m.add_argument("--prompt-len", type=int, action="append", default=None)
    m.add_argument("--max-new", type=int, default=None, help="tokens per request (default 8; 32 with --grid)")
    m.add_argument("--grid", action="store_true", help="every --mbps x --rtt-ms x --loss cell; then calibrate")
    m.add_argument("--mbps", type=float, nargs="+", default=None, help="uplink(s), Mbit/s (default 10; grid 1 5 20 50)")
    m.add_argument("--rtt-ms", type=float, nargs="+", default=None, help="RTT(s) (default 40; grid 10 40 120)")
    m.add_argument("--loss", type=float, nargs="+", default=None, help="packet loss rate(s) (default 0; grid 0 0.01)")
    m.add_argument("--repeats", type=int, default=None, help="default 1; 3 with --grid")
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", default="outputs/measure")
    g = sub.add_parser("migrate", help="a conversation's cache moving between turns: measured vs the simulator")
    g.add_argument("--model", default=None, help="HF dir or .gguf (default: the embedded SmolLM2)")
    g.add_argument("--scenario", default="default")
    g.add_argument("--move", action="append", default=None, help="OLD->NEW plans, each b,fmt,units (repeat)")
    g.add_argument("--ctx", type=int, nargs="+", default=[256, 1024], help="positions cached before the move")
    g.add_argument("--mbps", type=float, default=10.0)
    g.add_argument("--rtt-ms", type=float, default=40.0)
    g.add_argument("--repeats", type=int, default=1)
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default="outputs/migrate")
    c = sub.add_parser("calibrate", help="fit the simulator's link/compute terms to grid rows; held-out report")
    c.add_argument("--rows", required=True, help="grid.jsonl from measure --grid")
    c.add_argument("--scenario", default="default")
    c.add_argument("--out", default=None, help="directory (default: beside --rows)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    command = "splitrl-harness " + " ".join(argv if argv is not None else sys.argv[1:])
    if a.cmd == "migrate":
        from splitrl.runtime.migration_measure import run
        return run(a, command)
    if a.cmd == "calibrate":
        from splitrl.runtime.grid import read_rows
        from splitrl.runtime.gridreport import calibrate_and_report
        rows_path = Path(a.rows)
        rows = read_rows(rows_path)
        if not rows:
            print(f"splitrl-harness calibrate: --rows {rows_path}: no rows; run splitrl-harness measure --grid first",
                  file=sys.stderr)
            return 2
        _, env_params = simulator(a.scenario)
        cal, summ = calibrate_and_report(env_params, rows, Path(a.out) if a.out else rows_path.parent, command,
                                         rows_path, a.scenario)
        print(json.dumps(summ, indent=1))
        print(f"wrote {cal}")
        return 0
    return _measure(a, command)


def _measure(a, command: str) -> int:
    from splitrl.lm.model import load_causal_lm
    from splitrl.runtime.edge_cli import parse_plan
    from splitrl.runtime.split_model import SplitModel
    torch.set_num_threads(a.threads)
    lm = load_causal_lm(a.model)
    sm = SplitModel(lm.model)
    if a.grid:
        from splitrl.runtime.grid import GRID_PLANS
        plans = [parse_plan(p, sm) for p in (a.plan or GRID_PLANS)]
    else:
        plans = [parse_plan(p, sm) for p in (a.plan or DEFAULT_PLANS)]
    max_new = a.max_new or (32 if a.grid else 8)
    rng = np.random.default_rng(a.seed)
    prompts = [rng.integers(100, 20000, n).tolist() for n in (a.prompt_len or [32])]
    _, env_params = simulator(a.scenario)
    out = Path(a.out)
    t0 = time.perf_counter()
    if a.grid:
        from splitrl.runtime import grid as G
        from splitrl.runtime.gridreport import calibrate_and_report
        out.mkdir(parents=True, exist_ok=True)
        link = G.cells(a.mbps or G.GRID_MBPS, a.rtt_ms or G.GRID_RTT_MS, a.loss or G.GRID_LOSS)
        rows = G.run_grid(sm, plans, prompts[0], max_new, link, a.repeats or 3,
                          lambda *args: predict(env_params, *args), out / "grid.jsonl", a.seed)
        cal, summ = calibrate_and_report(env_params, rows, out, command, out / "grid.jsonl", a.scenario)
        print(json.dumps(summ, indent=1))
        print(f"wrote {out / 'grid.jsonl'}, {out / 'report.md'}, {out / 'heatmap.png'}, {cal} "
              f"in {time.perf_counter() - t0:.0f} s")
        return 0
    if a.policy:
        from splitrl.runtime.policy import OnnxPolicy
        pol = OnnxPolicy(a.policy, model_name=lm.name, sm=sm)
        b, f, units = pol.act(pol.observe(a.mbps[0] * 1e6 / 8 if a.mbps else 1.25e6,
                                          (a.rtt_ms or [40.0])[0] / 1e3, (a.prompt_len or [32])[0], max_new))
        plans.append(sm.plan(b, TX_FORMATS[f], units))
    mbps, rtt_ms = (a.mbps or [10.0])[0], (a.rtt_ms or [40.0])[0]
    rows = measure(sm, plans, prompts, max_new, mbps, rtt_ms, env_params, a.repeats or 1)
    path = report(rows, out, mbps, rtt_ms)
    print(path.read_text())
    print(f"wrote {path}, {path.parent / 'gap.png'}, {path.parent / 'measure.jsonl'} in {time.perf_counter() - t0:.0f} s")
    return 0
