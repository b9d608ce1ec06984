"""Describe the machine we run on as a Device: facts read from /proc, memory bandwidth measured.

What cannot be read from inside a VM (power draw) is an explicit, labelled assumption that the user
can override on the command line; `splitrl-profiles measure cost` then calibrates the efficiencies by
measuring a real model on this host.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import time
from pathlib import Path

import numpy as np

from splitrl.profiles.schema import DEVICE_SCHEMA


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (s.strip() for s in line.split(":", 1))
                info.setdefault(k, v)
    except OSError:
        pass
    return info


def _max_mhz(info: dict[str, str]) -> float:
    f = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if f.is_file():
        return int(f.read_text()) / 1000.0
    if "cpu MHz" in info:
        return float(info["cpu MHz"])
    raise RuntimeError("cannot read the CPU clock from /proc/cpuinfo or cpufreq; pass --ghz")


def fp32_flop_per_cycle(flags: set[str], vendor: str, family: int) -> int:
    """FP32 FLOP per cycle per core from the SIMD the CPU reports (two FMA pipes assumed)."""
    if "avx512f" in flags:
        # AMD Zen 4 runs 512-bit ops on 256-bit pipes (double-pumped): 32, not 64.
        return 32 if vendor == "AuthenticAMD" and family == 25 else 64
    if "avx2" in flags and "fma" in flags:
        return 32
    if "avx" in flags:
        return 16
    if "asimd" in flags or platform.machine() in ("aarch64", "arm64"):
        return 16
    return 8


def measure_copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s moved by a large numpy copy (read + write traffic), best of `repeats`."""
    src = np.ones(megabytes * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best


def describe_host(power_active_per_core: float = 3.75, power_idle_per_core: float = 1.0,
                  radio_tx: float = 1.0, cores: int | None = None, ghz: float | None = None) -> dict:
    """A device document for this machine, ready for `Device.from_dict` or writing to YAML."""
    info = _cpuinfo()
    flags = set(info.get("flags", info.get("Features", "")).split())
    vendor = info.get("vendor_id", platform.machine())
    family = int(info.get("cpu family", "0") or 0)
    n = cores or len(os.sched_getaffinity(0))
    clock = (ghz * 1000.0) if ghz else _max_mhz(info)
    per_cycle = fp32_flop_per_cycle(flags, vendor, family)
    fp32 = n * clock * 1e6 * per_cycle
    peak = {"fp32": fp32}
    if "avx512_bf16" in flags:
        peak["bf16"] = 2 * fp32
    if "avx512_fp16" in flags:
        peak["fp16"] = 2 * fp32
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        peak["int8"] = 4 * fp32
    bw = measure_copy_bandwidth()
    mem_total = 0.0
    m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()) if Path("/proc/meminfo").exists() else None
    if m:
        mem_total = int(m.group(1)) * 1024.0
    model_name = info.get("model name", platform.processor() or platform.machine())
    dot = "int8" if "int8" in peak else "fp32"
    return {
        "schema": DEVICE_SCHEMA,
        "name": "this-host",
        "display_name": f"{model_name}, {n} cores at {clock / 1000:.2f} GHz (this host)",
        "role": "edge",
        "runtime": "pytorch-eager",
        "peak_flops": {k: float(f"{v:.4g}") for k, v in peak.items()},
        "quantized_matmul": {"int8": {"dtype": dot, "slowdown": 2.5}, "int4": {"dtype": dot, "slowdown": 4.0}},
        "mem_bandwidth": float(f"{bw:.4g}"),
        "memory_bytes": float(f"{0.8 * mem_total:.4g}"),
        "power_w": {"active": round(n * power_active_per_core + n * power_idle_per_core, 2),
                    "idle": round(n * power_idle_per_core, 2), "radio_tx": radio_tx},
        "kernel_overhead_s": 8.0e-6,
        "efficiency": {"compute": 0.5, "memory": 1.0},
        "radio": dict(WIFI_RADIO),
        "source": _host_sources(model_name, n, clock, per_cycle, flags, mem_total, bw,
                                power_active_per_core, power_idle_per_core, radio_tx),
    }


# Huang et al., MobiSys 2012, Wi-Fi power model (Tables 3 and 4; recalled, see docs/datasheets.md).
WIFI_RADIO = {"link": "wifi", "transfer_w": 0.13286, "tx_w_per_mbps": 0.28317, "rx_w_per_mbps": 0.13701,
              "connected_w": 0.1193, "tail_w": 0.1193, "tail_s": 0.2381, "promotion_w": 0.1244, "promotion_s": 0.0791}


def _host_sources(model_name, n, clock, per_cycle, flags, mem_total, bw, power_active_per_core,
                  power_idle_per_core, radio_tx) -> dict:
    simd = ", ".join(sorted(f for f in flags if f.startswith(("avx", "fma", "amx"))))
    return {
        "read": f"/proc/cpuinfo: {model_name}; {n} usable cores; {clock:.0f} MHz; {per_cycle} FP32 FLOP/cycle/core "
                f"from SIMD flags ({simd}); /proc/meminfo MemTotal {mem_total / 1e9:.1f} GB (80% usable for a model)",
        "measured": f"memory bandwidth: numpy copy of 256 MiB, best of 5, read+write bytes/s, on "
                    f"{datetime.date.today().isoformat()} ({platform.node() or 'host'}, numpy {np.__version__}); "
                    "efficiency.memory = 1 because the measured figure is already achieved bandwidth",
        "assumed": f"power cannot be read inside a VM: {power_active_per_core} W/core active (a 360 W, 96-core "
                   f"server CPU's TDP share) + {power_idle_per_core} W/core idle; radio {radio_tx} W (a Wi-Fi NIC); "
                   "compute efficiency until `splitrl-profiles measure cost` calibrates it",
        "runtime": "the measuring tool runs Hugging Face modules in eager PyTorch (splitrl/lm/units.py); kernel overhead "
                   "8 us per aten op: a one-token RMSNorm (6 ops) took 48 us on the shipped host (docs/profiles.md)",
        "quantized": "assumption: ggml's int8/int4 dot products cost 2.5x / 4x the instructions of a bare int8 dot "
                     "stream (counted on its NEON kernels, docs/datasheets.md), at the VNNI int8 rate if the CPU has "
                     "one, else fp32",
        "radio": "assumption: a Wi-Fi link with Huang et al. (MobiSys 2012)'s Wi-Fi power model",
        "command": "splitrl-profiles host --out splitrl/profiles_data/devices/this-host.yaml",
    }
