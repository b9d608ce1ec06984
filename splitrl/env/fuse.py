"""How the step's values reach XLA's CPU fusion: compute a value once and store it where many fusions
read it. Pure JAX, exact (no value changes)."""

from __future__ import annotations

import jax


def materialise(x):
    """x (a pytree of float arrays), computed once. XLA's CPU fusion copies chains of cheap ops (the PRNG's
    hash, ndtri's polynomials, a lookup's interpolation) into every fusion that reads them, once per reader;
    a division is an expensive op it never copies, so x / 1 (a 1 it cannot fold: exact) makes it store x once.
    jax.lax.optimization_barrier does not help here: the CPU pipeline removes it before fusion."""
    return jax.tree.map(lambda a: a / (a == a).astype(a.dtype), x)
