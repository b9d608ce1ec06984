"""`jax.random.permutation(key, n)` and `jax.random.choice(key, n, (k,), replace=False)`, the same
integers from the same key, computed with single-operand sorts.

Why: jax shuffles by sorting `arange(n)` by fresh random uint32 keys (`lax.sort_key_val`, stable,
`num_rounds` times). On XLA:CPU a two-operand sort calls the compiled comparator per comparison and
takes ~1.7 ms for n = 8,192, while a one-operand uint32 sort takes ~0.2 ms. PPO draws one permutation
per epoch and the guide one per update, ~7 % of an HPPO update (docs/training.md, "Where HPPO's update
time goes").

The stable order by key is the order of the pairs (rank of the key's first occurrence, index): both
are < n, so each pair packs into one uint32 when n·n < 2**32, and sorting the packed values gives the
stable argsort exactly, ties included. Larger n falls back to jax's own sort.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_PACKED_LIMIT = 1 << 16   # n·n must fit in a uint32


def stable_argsort(keys: jax.Array) -> jax.Array:
    """`jnp.argsort(keys, stable=True)` for a 1-D uint32 array, by two one-operand sorts."""
    n = keys.shape[0]
    if n > _PACKED_LIMIT:
        return jax.lax.sort_key_val(keys, jnp.arange(n, dtype=jnp.int32))[1]
    first = jnp.searchsorted(jax.lax.sort(keys), keys, side="left").astype(jnp.uint32)
    packed = jax.lax.sort(first * jnp.uint32(n) + jnp.arange(n, dtype=jnp.uint32))
    return (packed % jnp.uint32(n)).astype(jnp.int32)


def permutation(key: jax.Array, n: int) -> jax.Array:
    """The integers of `jax.random.permutation(key, n)`: the same rounds, keys and stable sorts."""
    x = jnp.arange(n)
    num_rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
    for _ in range(num_rounds):
        key, subkey = jax.random.split(key)
        x = x[stable_argsort(jax.random.bits(subkey, (n,), jnp.uint32))]
    return x


def choice_without_replacement(key: jax.Array, n: int, k: int) -> jax.Array:
    """The integers of `jax.random.choice(key, n, (k,), replace=False)`: the first k of the permutation."""
    return permutation(key, n)[:k]
