"""Plots of an evaluation: latency CDF and partition over time per scenario, objective per scenario; a
fleet's response-time CDF, cloud utilisation and offloaded share against the published wait per policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splitrl.evaluation.stats import request_times


def save_plot(fig, ax, xlabel: str, ylabel: str, title: str, path: Path, log_x: bool = False,
              legend_loc: str = "best") -> Path:
    """Finish a line plot the way every evaluation plot looks (grid, small legend), save it, close it."""
    import matplotlib.pyplot as plt
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc=legend_loc)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(rows: list[dict], raw: dict, out_dir: Path, partition_policies: tuple[str, ...] = ()) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    all_pols = list(dict.fromkeys(r["policy"] for r in rows))
    cmap = plt.get_cmap("tab20")
    color = {p: cmap(i % 20) for i, p in enumerate(all_pols)}   # one colour per policy in every plot
    for scen in scenarios:
        pols = [p for (s, p) in raw if s == scen]
        # latency CDF
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for p in pols:
            lat = np.sort(request_times(raw[scen, p])[0])   # unanswered requests (+inf) never reach the curve's top
            ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=p, lw=2.2 if p == "hppo" else 1.3, color=color[p],
                    ls="--" if p == "oracle_dpp" else "-")
        paths.append(save_plot(fig, ax, "response time per request: queueing + service (s, log scale)",
                               "fraction of requests", f"latency CDF: {scen}", out_dir / f"latency_cdf_{scen}.png",
                               log_x=True, legend_loc="lower right"))
        # partition over time beside the bandwidth (seed 0, episode 0: the same channel for every policy)
        shown = [p for p in pols if not partition_policies or p in partition_policies]
        fig, axes = plt.subplots(len(shown) + 1, 1, figsize=(8, 1.3 * (len(shown) + 1) + 0.6), sharex=True)
        bw = raw[scen, shown[0]]["bandwidth"][0, 0] * 8 / 1e6
        axes[0].semilogy(bw, color="k", lw=1)
        axes[0].set_ylabel("Mbit/s", fontsize=8)
        axes[0].set_title(f"true bandwidth and each policy's split over one episode: {scen}", fontsize=10)
        n_layers = max(float(np.max(raw[scen, p]["boundary"])) for p in pols)
        for ax, p in zip(axes[1:], shown, strict=True):
            o = raw[scen, p]
            depth = o["boundary"][0, 0] + o["edge_frac"][0, 0]
            ax.step(np.arange(depth.size), depth, where="post", lw=1.2, color=color[p])
            ax.set_ylim(-0.5, n_layers + 0.5)
            ax.set_ylabel(p, fontsize=7, rotation=0, ha="right", va="center")
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("slot (layers on the edge + share of the boundary layer's units, per policy)")
        fig.tight_layout()
        paths.append(out_dir / f"partition_{scen}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    paths.append(plot_objective(rows, out_dir / "objective_by_scenario.png", color))
    return paths


def plot_objective(rows: list[dict], path: Path, color: dict | None = None) -> Path:
    """Mean objective per scenario and policy with 95 % intervals (from the rows alone)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    pols = list(dict.fromkeys(r["policy"] for r in rows))
    if color is None:
        cmap = plt.get_cmap("tab20")
        color = {p: cmap(i % 20) for i, p in enumerate(pols)}
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(scenarios) + 3), 4.5))
    width = 0.8 / len(pols)
    for i, p in enumerate(pols):
        xs, ys, es = [], [], []
        for j, scen in enumerate(scenarios):
            r = next((r for r in rows if r["scenario"] == scen and r["policy"] == p), None)
            if r is not None:
                xs.append(j + (i - len(pols) / 2 + 0.5) * width)
                ys.append(r["objective"])
                es.append(r["objective_ci"])
        ax.bar(xs, ys, width, yerr=es, label=p, capsize=1.5, color=color[p], hatch="//" if p == "oracle_dpp" else None)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([s.removeprefix("splitwise_") for s in scenarios], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("DPP objective per slot\n(symlog; lower is better)")
    ax.set_title("mean drift-plus-penalty objective per slot, 95 % intervals over seeds", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fleet(fleet: str, raw: dict, out_dir: Path, n_layers: int) -> list[Path]:
    """Per policy: the response-time CDF (unanswered requests keep it below 1), the cloud utilisation
    over the episode, and the offloaded share (boundary < L) against the published wait."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = {k: plt.subplots(figsize=(6.5, 4)) for k in ("cdf", "util", "offload")}
    bins = np.array([0.0, 0.1, 0.3, 1, 2, 4, 8, 16, 32, np.inf])
    for name, outs in raw.items():
        times = np.concatenate([request_times({k: np.asarray(o[k], np.float64) for k in
                                               ("arrivals", "drops", "request_failed", "response_time")})[0]
                                for o in outs])
        finite = np.sort(times[np.isfinite(times)])
        figs["cdf"][1].plot(finite, np.arange(1, finite.size + 1) / max(times.size, 1), label=name)
        util = np.mean([np.asarray(o["cloud_util"]).mean(1) for o in outs], 0)
        figs["util"][1].plot(np.arange(util.size), util, label=name)
        wait = np.concatenate([np.asarray(o["published_wait"]).ravel() for o in outs])
        off = np.concatenate([(np.asarray(o["boundary"]) < n_layers).ravel() for o in outs])
        idx = np.digitize(wait, bins[1:-1])
        mid = [k for k in range(len(bins) - 1) if (idx == k).any()]
        figs["offload"][1].plot([max(bins[k], 0.03) for k in mid], [off[idx == k].mean() for k in mid], "o-", label=name)
    stem = out_dir / fleet
    return [save_plot(*figs["cdf"], "response time (s)", "share of requests answered within",
                      f"{fleet}: response-time CDF", Path(f"{stem}_cdf.png"), log_x=True, legend_loc="lower right"),
            save_plot(*figs["util"], "slot", "cloud utilisation (mean over fleets and seeds)",
                      f"{fleet}: cloud utilisation", Path(f"{stem}_util.png")),
            save_plot(*figs["offload"], "published cloud wait (s, bin's lower edge; 0 at 0.03)",
                      "share of device-slots using the cloud", f"{fleet}: offloading vs published wait",
                      Path(f"{stem}_offload.png"), log_x=True)]
