"""Linear interpolation on a grid inside a jitted step (no search loops)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def lerp_index(grid: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index and weight to interpolate linearly on `grid` at `x` (flat beyond both ends)."""
    # a compare-and-count fuses into one kernel; jnp.searchsorted lowers to a while loop
    i = jnp.clip(jnp.sum(grid < x) - 1, 0, grid.shape[0] - 2)
    w = jnp.clip((x - grid[i]) / (grid[i + 1] - grid[i]), 0.0, 1.0)
    return i, w


def at(a: jax.Array, iw: tuple[jax.Array, jax.Array]) -> jax.Array:
    """a[..., x] interpolated along the last axis."""
    i, w = iw
    return a[..., i] * (1 - w) + a[..., i + 1] * w
