"""Training across devices: the member batch (seeds × hyperparameter grid) or each member's env batch,
split over a 1-D `jax.sharding.Mesh` with axis "data".

Two layouts, one per batch axis:
  - `members`: each device trains `members / devices` whole policies (`jax.shard_map` of the vmapped
    function, every array split on its leading member axis). Nothing crosses devices, and each
    device compiles the program of `members / devices` policies. Equal to the one-device run up to
    float32 rounding (XLA compiles the partitioned program differently; tests/test_scaling.py).
  - `envs`: every device holds all parameters (replicated) and `num_envs / devices` of each
    policy's environments; `jax.jit` with input/output shardings, XLA (GSPMD) partitions the program
    and inserts the collectives (gradient and statistics sums over the env axis). For one large policy.
    Same program as one device; sums over envs are split per device, so results can differ from the
    one-device run in the last bits (tests/test_scaling.py states the tolerance).

`devices = 1` is the plain single-device path (`jax.jit(jax.vmap(fn))`, no mesh). Device-agnostic:
the devices are `jax.devices()` of JAX's default backend (CPU, GPU or TPU; `JAX_PLATFORMS` picks).
One process only: multi-host JAX (`jax.distributed`) is not supported here; scale across hosts with
a Hydra sweep through Ray (docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from splitrl.config import ConfigError

AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the member batch runs. `axis`: "none" (one device), "members" or "envs"."""
    mesh: Mesh | None
    axis: str

    @property
    def num_devices(self) -> int:
        return self.mesh.size if self.mesh is not None else 1

    def describe(self) -> dict[str, Any]:
        devices = self.mesh.devices.ravel().tolist() if self.mesh is not None else jax.devices()[:1]
        return {"devices": self.num_devices, "platform": devices[0].platform, "shard": self.axis}

    # ------------------------------------------------------------------ shardings
    def _named(self, spec: P) -> NamedSharding | None:
        return NamedSharding(self.mesh, spec) if self.mesh is not None else None

    def batch_sharding(self, tree):
        """Per-member inputs (keys, HParams): split by member, or replicated under `envs`."""
        spec = P(AXIS) if self.axis == "members" else P()
        return jax.tree.map(lambda _: self._named(spec), tree)

    def state_sharding(self, state):
        """A LearnerState of [B, ...] arrays: split by member, or (`envs`) the env axis (axis 1) of
        env_state / obs / running_return split and everything else replicated."""
        if self.axis == "members":
            return jax.tree.map(lambda _: self._named(P(AXIS)), state)
        rep, env = self._named(P()), self._named(P(None, AXIS))
        return state.replace(**{f.name: jax.tree.map(lambda _, s=(env if f.name in ENV_FIELDS else rep): s,
                                                     getattr(state, f.name))
                                for f in dataclasses.fields(state)})

    def put(self, tree, sharding_of):
        """`tree` placed as `sharding_of(tree)` says (a no-op on one device)."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, sharding_of(tree))

    # ------------------------------------------------------------------ mapped functions
    def map_members(self, fn, in_shardings=None, out_shardings=None):
        """`fn` (one member's function of per-member arguments) over the member batch, jitted.

        none: jit(vmap(fn)). members: jit(shard_map(vmap(fn))), every argument and output split on
        its leading axis. envs: jit(vmap(fn)) with `in_shardings` / `out_shardings` (pytrees or
        prefixes of NamedSharding; None: XLA chooses)."""
        batched = jax.vmap(fn)
        if self.axis == "none":
            return jax.jit(batched)
        if self.axis == "members":
            return jax.jit(jax.shard_map(batched, mesh=self.mesh, in_specs=P(AXIS), out_specs=P(AXIS),
                                         check_vma=False))
        kwargs = {k: v for k, v in (("in_shardings", in_shardings), ("out_shardings", out_shardings)) if v is not None}
        return jax.jit(batched, **kwargs)


ENV_FIELDS = ("env_state", "obs", "running_return")   # LearnerState fields with an env axis


def place(devices: int | str, shard: str, num_members: int, num_envs: int, platform: str | None = None) -> Placement:
    """The Placement for `devices` (a count or "all") of `platform` (default: JAX's default backend)
    and `shard` (auto | members | envs), or a ConfigError naming the field and the fix."""
    if jax.process_count() > 1:
        raise ConfigError("splitrl-train runs in one process: multi-host JAX (jax.distributed, "
                          f"{jax.process_count()} processes) is not supported; scale across hosts with a Hydra "
                          "sweep through hydra/launcher=ray (docs/scaling.md)")
    available = jax.devices(platform)
    platform = available[0].platform
    n = len(available) if devices == "all" else int(devices)
    if n > len(available):
        hint = (" or start the process with XLA_FLAGS=--xla_force_host_platform_device_count=N to split the CPU "
                "into N devices" if platform == "cpu" else "")
        raise ConfigError(f"config devices = {devices}: only {len(available)} {platform} device(s) are visible "
                          f"({', '.join(str(d) for d in available)}); set devices=all or a smaller count{hint}")
    if n == 1:
        return Placement(mesh=None, axis="none")
    members_fit, envs_fit = num_members % n == 0, num_envs % n == 0
    axis = shard
    if shard == "auto":
        axis = "members" if members_fit else "envs" if envs_fit else None
        if axis is None:
            raise ConfigError(f"config devices = {n} (shard = auto): neither the {num_members} policies "
                              f"(num_seeds × lr_grid × ent_coef_grid × reward_v_grid) nor agent.num_envs = "
                              f"{num_envs} divide over {n} devices; make one of them a multiple of {n}, or set "
                              "devices to a divisor of one of them")
    elif shard == "members" and not members_fit:
        raise ConfigError(f"config shard = members: the {num_members} policies (num_seeds × lr_grid × "
                          f"ent_coef_grid × reward_v_grid) do not divide over devices = {n}; train a multiple "
                          f"of {n} policies (e.g. num_seeds), set devices to a divisor of {num_members}, or "
                          "shard=envs")
    elif shard == "envs" and not envs_fit:
        raise ConfigError(f"config shard = envs: agent.num_envs = {num_envs} does not divide over devices = {n}; "
                          f"set agent.num_envs to a multiple of {n}, devices to a divisor of {num_envs}, or "
                          "shard=members")
    return Placement(mesh=Mesh(np.array(available[:n]), (AXIS,)), axis=axis)
