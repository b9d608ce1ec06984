"""The step's uniforms and random words, bit for bit `jax.random.uniform(key, (n,), minval, maxval)` and
`jax.random.bits(key, (n,), jnp.uint32)` with the default threefry2x32 key, with the hash's 20 rounds
written out. On the CPU jax runs the hash as a rolled loop of 5 iterations (to keep compiles short): under
vmap each iteration stores and reloads the whole batch's counters, which cost more than the rounds.
Written out, the rounds fuse into one pass over the batch. Typed keys, another key implementation or bit
scheme fall back to jax.random itself."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x, r: int):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 hash (Salmon et al., SC 2011) of the counter pairs (x1, x2) under key (k1, k2):
    jax's own rounds and key schedule, unrolled."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x = [x1 + ks[0], x2 + ks[1]]
    for i in range(5):
        for r in ROTATIONS[i % 2]:
            x[0] = x[0] + x[1]
            x[1] = x[0] ^ _rotl(x[1], r)
        x = [x[0] + ks[(i + 1) % 3], x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)]
    return x


def _exact() -> bool:
    """Whether jax draws a raw key's uniforms the way `uniforms` reproduces (threefry, partitionable bits)."""
    return jax.config.jax_threefry_partitionable and jax.config.jax_default_prng_impl == "threefry2x32"


def bits(key: jax.Array, n: int) -> jax.Array:
    """u32[n] random words: jax.random.bits(key, (n,), jnp.uint32)'s numbers."""
    if not _exact() or key.dtype != jnp.uint32:   # typed keys: jax's own path
        return jax.random.bits(key, (n,), jnp.uint32)
    b1, b2 = threefry2x32(key[0], key[1], jnp.zeros(n, jnp.uint32), jnp.arange(n, dtype=jnp.uint32))
    return b1 ^ b2


def uniforms(key: jax.Array, n: int, minval: float, maxval: float) -> jax.Array:
    """f32[n] uniform in [minval, maxval): jax.random.uniform's numbers (tests/test_env_golden.py checks it)."""
    if not _exact() or key.dtype != jnp.uint32:   # typed keys: jax's own path
        return jax.random.uniform(key, (n,), minval=minval, maxval=maxval)
    # jax.random.uniform's mantissa trick: 23 random bits under the exponent of 1.0, minus 1, scaled
    floats = jax.lax.bitcast_convert_type((bits(key, n) >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32) - 1.0
    lo, hi = jnp.float32(minval), jnp.float32(maxval)
    return jax.lax.max(lo, jax.lax.reshape(floats * (hi - lo) + lo, (n,)))
