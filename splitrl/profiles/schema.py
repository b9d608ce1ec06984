"""The profile schema, part one: model architectures and devices (the cost and PPL tables are in
`splitrl.profiles.table_schema`). All profile kinds are frozen dataclasses built only through `from_dict`, which validates every field and
raises `ProfileError` naming the file and field. Arrays are numpy (host side); the JAX env converts
them once. Units: seconds, joules, bytes, FLOP/s, watts.

Placement units of one transformer layer, in order (the env and the harness use the same order):
    attn_norm, attn.0 .. attn.{A-1}, ffn_norm, ffn.0 .. ffn.{C-1}
An attention unit holds n_heads/A query heads and whole KV groups (n_kv_heads/A of them), with its
rows of the output projection, so its output is a partial sum over d_model; an FFN unit holds a
d_ff/C slice of the up/gate columns and the matching down rows, also a partial sum.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from splitrl.profiles.errors import ProfileError
from splitrl.profiles.formats import WEIGHT_FORMATS, compute_dtype
from splitrl.profiles.launches import RUNTIMES
from splitrl.profiles.radio import Radio, read_radio
from splitrl.profiles.reader import Reader

MODEL_SCHEMA, DEVICE_SCHEMA, COSTS_SCHEMA, PPL_SCHEMA = (
    "splitrl.model/v1", "splitrl.device/v2", "splitrl.costs/v1", "splitrl.ppl/v1")
FAMILIES = ("llama", "gpt2")  # llama: RMSNorm, SwiGLU, RoPE; gpt2: LayerNorm+bias, GELU MLP, learned positions
MODEL_BLOCKS = ("embedding", "final_norm", "lm_head")  # run once per token outside the layers
DEVICE_ROLES = ("edge", "cloud")
PROVENANCE_KINDS = ("analytic", "measured")
PEAK_DTYPES = ("fp32", "fp16", "bf16", "int8")
QUANTIZED_FORMATS = ("int8", "int4")  # weight formats whose matmul rate a device states (quantized_matmul)


def check_schema(r: Reader, expected: str) -> None:
    got = r.raw("schema")
    if got != expected:
        raise r.fail("schema", got, f"must be {expected!r}", "this file is not of that kind or is from another version")


def read_source(r: Reader, key: str = "source") -> dict:
    """Provenance is required and free-form, but must be a non-empty mapping."""
    value = r.raw(key)
    if not isinstance(value, dict) or not value:
        raise r.fail(key, value, "must be a non-empty mapping saying where the numbers come from")
    return value


@dataclasses.dataclass(frozen=True)
class ModelArch:
    name: str
    display_name: str
    family: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    vocab_size: int
    max_context: int
    tie_embeddings: bool
    attn_units: int
    ffn_chunks: int
    kv_bytes_per_value: float
    bytes_per_param: dict
    source: dict
    path: str = ""

    @classmethod
    def from_dict(cls, data: dict, path: Path | str = "<dict>") -> ModelArch:
        r = Reader(path, data)
        check_schema(r, MODEL_SCHEMA)
        f = dict(
            name=r.str("name"), display_name=r.str("display_name"), family=r.str("family", FAMILIES),
            n_layers=r.int("n_layers", 1), d_model=r.int("d_model", 1), n_heads=r.int("n_heads", 1),
            n_kv_heads=r.int("n_kv_heads", 1), head_dim=r.int("head_dim", 1), d_ff=r.int("d_ff", 1),
            vocab_size=r.int("vocab_size", 1), max_context=r.int("max_context", 1),
            tie_embeddings=r.bool("tie_embeddings"), attn_units=r.int("attn_units", 1),
            ffn_chunks=r.int("ffn_chunks", 1), kv_bytes_per_value=r.float("kv_bytes_per_value", 0, lo_open=True),
        )
        bpp = r.sub("bytes_per_param")
        f["bytes_per_param"] = {fmt: bpp.float(fmt, 0, lo_open=True) for fmt in WEIGHT_FORMATS}
        bpp.done()
        f["source"] = read_source(r)
        r.done()
        m = cls(**f, path=str(path))
        m._check(r)
        return m

    def _check(self, r: Reader) -> None:
        if self.d_model % self.n_heads:
            raise r.fail("n_heads", self.n_heads, f"must divide d_model = {self.d_model}")
        if self.n_heads * self.head_dim != self.d_model and self.family == "gpt2":
            raise r.fail("head_dim", self.head_dim, f"n_heads * head_dim must equal d_model = {self.d_model}")
        if self.n_heads % self.n_kv_heads:
            raise r.fail("n_kv_heads", self.n_kv_heads, f"must divide n_heads = {self.n_heads}")
        if self.n_kv_heads % self.attn_units:
            raise r.fail("attn_units", self.attn_units,
                         f"must divide n_kv_heads = {self.n_kv_heads} (a unit holds whole KV groups)")
        if self.d_ff % self.ffn_chunks:
            raise r.fail("ffn_chunks", self.ffn_chunks, f"must divide d_ff = {self.d_ff}")

    # ---- derived structure -------------------------------------------------------------------
    @property
    def unit_names(self) -> tuple[str, ...]:
        return (("attn_norm",) + tuple(f"attn.{i}" for i in range(self.attn_units))
                + ("ffn_norm",) + tuple(f"ffn.{i}" for i in range(self.ffn_chunks)))

    @property
    def unit_kinds(self) -> tuple[str, ...]:
        return tuple("norm" if n.endswith("_norm") else n.split(".")[0] for n in self.unit_names)

    @property
    def n_units(self) -> int:
        return self.attn_units + self.ffn_chunks + 2

    @property
    def heads_per_unit(self) -> int:
        return self.n_heads // self.attn_units

    @property
    def kv_heads_per_unit(self) -> int:
        return self.n_kv_heads // self.attn_units

    def unit_params(self) -> np.ndarray:
        """Parameters of each placement unit of one layer, shape [n_units]."""
        d, hd = self.d_model, self.head_dim
        q, kv = self.heads_per_unit * hd, self.kv_heads_per_unit * hd
        gpt2 = self.family == "gpt2"
        norm = 2 * d if gpt2 else d
        attn = d * q + 2 * d * kv + q * d + ((q + 2 * kv + d / self.attn_units) if gpt2 else 0)
        chunk = self.d_ff // self.ffn_chunks
        ffn = (2 * d * chunk + chunk + d / self.ffn_chunks) if gpt2 else 3 * d * chunk
        return np.array([norm] + [attn] * self.attn_units + [norm] + [ffn] * self.ffn_chunks, dtype=np.float64)

    def block_params(self) -> dict[str, float]:
        """Parameters of the blocks outside the layers. lm_head counts its matrix even when tied: the
        embedding (edge) and the head (cloud) usually sit on different sides, each needing a copy."""
        emb = self.vocab_size * self.d_model + (self.max_context * self.d_model if self.family == "gpt2" else 0)
        norm = 2 * self.d_model if self.family == "gpt2" else self.d_model
        return {"embedding": float(emb), "final_norm": float(norm), "lm_head": float(self.vocab_size * self.d_model)}

    def total_params(self) -> float:
        """Parameter count as published (tied embeddings counted once)."""
        b = self.block_params()
        head = 0.0 if self.tie_embeddings else b["lm_head"]
        return self.n_layers * self.unit_params().sum() + b["embedding"] + b["final_norm"] + head

    def unit_kv_values_per_token(self) -> np.ndarray:
        """KV-cache values one token adds per unit of one layer (K and V of the unit's KV heads)."""
        kv = 2 * self.kv_heads_per_unit * self.head_dim
        return np.array([0] + [kv] * self.attn_units + [0] * (self.ffn_chunks + 1), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class Thermal:
    """An edge device's first-order thermal model and its governor (splitrl/env/heat.py): optional in a
    device file (`thermal:`); a scenario with `heat: {enabled: true}` needs it. Sources in `source.thermal`."""
    r_th_k_per_w: float   # steady-state rise over ambient per watt drawn
    tau_s: float          # thermal time constant
    throttle_c: float     # the governor starts to cut the clock here
    limit_c: float        # ... and runs at min_speed from here up
    min_speed: float      # share of full compute speed at limit_c


def read_thermal(r: Reader) -> Thermal | None:
    """The optional `thermal` mapping of an edge device file."""
    if r.raw("thermal", None) is None:
        return None
    t = r.sub("thermal")
    th = Thermal(r_th_k_per_w=t.float("r_th_k_per_w", 0, lo_open=True), tau_s=t.float("tau_s", 0, lo_open=True),
                 throttle_c=t.float("throttle_c", -50, 200), limit_c=t.float("limit_c", -50, 200),
                 min_speed=t.float("min_speed", 0, 1, lo_open=True))
    t.done()
    if th.limit_c <= th.throttle_c:
        raise t.fail("limit_c", th.limit_c, f"must be above throttle_c = {th.throttle_c}")
    if "thermal" not in r.data.get("source", {}):
        raise r.fail("source.thermal", None, "missing: a thermal block must say where its numbers come from",
                     "add source.thermal (cite the measurement, or say which figures are assumptions)")
    return th


@dataclasses.dataclass(frozen=True)
class Device:
    """A device's datasheet figures. Every model-of-the-world number cites a source in the YAML.

    runtime: the inference runtime modelled on it (`splitrl.profiles.launches.RUNTIMES`), which sets
        how many kernels a sublayer launches; kernel_overhead_s is the cost of one launch there.
    quantized_matmul: how int8/int4 weights are multiplied, {"int8"|"int4": (dtype, slowdown)}:
        at peak_flops[dtype] / slowdown (the instructions spent unpacking and scaling per MAC).
    radio: the link to the cloud and its energy figures (`splitrl.profiles.radio.Radio`).
    """
    name: str
    display_name: str
    role: str
    runtime: str
    peak_flops: dict          # dtype -> FLOP/s (dense); a dtype missing runs at the fp32 rate
    quantized_matmul: dict    # "int8"/"int4" -> (dtype in peak_flops, slowdown >= 1)
    mem_bandwidth: float      # bytes/s, theoretical peak
    memory_bytes: float       # bytes usable for model weights + KV cache
    power_active_w: float
    power_idle_w: float
    power_radio_tx_w: float   # one extra figure while transmitting (read by the env until it uses `radio`)
    kernel_overhead_s: float  # the part of one kernel launch that does not overlap work, in `runtime`
    compute_efficiency: float  # achieved fraction of peak FLOP/s on transformer GEMMs
    memory_efficiency: float   # achieved fraction of peak bandwidth on weight streaming
    radio: Radio
    source: dict
    thermal: Thermal | None = None
    battery_wh: float | None = None   # a battery-powered edge's battery (optional; source.battery required beside it)
    path: str = ""

    @classmethod
    def from_dict(cls, data: dict, path: Path | str = "<dict>") -> Device:
        r = Reader(path, data)
        if r.raw("schema") == "splitrl.device/v1":
            raise r.fail("schema", "splitrl.device/v1", f"must be {DEVICE_SCHEMA!r}",
                         "v2 adds runtime, quantized_matmul and radio: add them (docs/profiles.md, Device) and "
                         f"set schema: {DEVICE_SCHEMA}")
        check_schema(r, DEVICE_SCHEMA)
        f = dict(name=r.str("name"), display_name=r.str("display_name"), role=r.str("role", DEVICE_ROLES),
                 runtime=r.str("runtime", RUNTIMES))
        f["peak_flops"] = _read_peak_flops(r)
        f["quantized_matmul"] = _read_quantized_matmul(r, f["peak_flops"])
        f["mem_bandwidth"] = r.float("mem_bandwidth", 0, lo_open=True)
        f["memory_bytes"] = r.float("memory_bytes", 0, lo_open=True)
        pw = r.sub("power_w")
        f["power_active_w"] = pw.float("active", 0, lo_open=True)
        f["power_idle_w"] = pw.float("idle", 0)
        f["power_radio_tx_w"] = pw.float("radio_tx", 0)
        pw.done()
        if f["power_idle_w"] > f["power_active_w"]:
            raise ProfileError(path, "power_w.idle", f["power_idle_w"],
                               f"must not exceed power_w.active = {f['power_active_w']}")
        f["kernel_overhead_s"] = r.float("kernel_overhead_s", 0)
        eff = r.sub("efficiency")
        f["compute_efficiency"] = eff.float("compute", 0, 1, lo_open=True)
        f["memory_efficiency"] = eff.float("memory", 0, 1, lo_open=True)
        eff.done()
        f["radio"] = read_radio(r, f["role"])
        f["thermal"] = read_thermal(r)
        f["battery_wh"] = None if r.raw("battery_wh", None) is None else r.float("battery_wh", 0, lo_open=True)
        if f["battery_wh"] is not None and "battery" not in r.data.get("source", {}):
            raise r.fail("source.battery", None, "missing: a battery_wh figure must say where it comes from",
                         "add source.battery (the spec sheet)")
        f["source"] = read_source(r)
        r.done()
        return cls(**f, path=str(path))

    def flops(self, dtype: str) -> float:
        """Achievable FLOP/s for `dtype` (peak x efficiency); unsupported dtypes run at fp32 speed."""
        return self.peak_flops.get(dtype, self.peak_flops["fp32"]) * self.compute_efficiency

    def weight_flops(self, weight_format: str) -> float:
        """Achievable FLOP/s of a matmul by weights stored in `weight_format`: int8/int4 at the rate
        of `quantized_matmul`, fp32/fp16 at their own dtype's rate."""
        if weight_format in self.quantized_matmul:
            dtype, slowdown = self.quantized_matmul[weight_format]
            return self.flops(dtype) / slowdown
        return self.flops(compute_dtype(weight_format))

    @property
    def bandwidth(self) -> float:
        return self.mem_bandwidth * self.memory_efficiency


def _read_peak_flops(r: Reader) -> dict:
    pf = r.sub("peak_flops")
    peak = {k: pf.float(k, 0, lo_open=True) for k in PEAK_DTYPES if k in pf.data}
    pf.done()
    if "fp32" not in peak:
        raise pf.fail("fp32", None, "missing required field", "add it")
    return peak


def _read_quantized_matmul(r: Reader, peak: dict) -> dict:
    """{"int8": (dtype, slowdown), "int4": (...)}: each dtype must have a peak_flops entry."""
    qm = r.sub("quantized_matmul")
    out = {}
    for fmt in QUANTIZED_FORMATS:
        q = qm.sub(fmt)
        dtype, slowdown = q.str("dtype", PEAK_DTYPES), q.float("slowdown", 1)
        q.done()
        if dtype not in peak:
            raise q.fail("dtype", dtype, f"must have a peak_flops entry (have {sorted(peak)})",
                         f"add peak_flops.{dtype} or name a dtype the device lists")
        out[fmt] = (dtype, slowdown)
    qm.done()
    return out
