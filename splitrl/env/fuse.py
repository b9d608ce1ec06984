"""How the step's values reach XLA's CPU fusion: compute a value once where many fusions read it
(`materialise`, exact), and sum or take the maximum over a short axis without a reduction kernel
(the adds run in a fixed order that may round differently from XLA's reduction: a few ulps)."""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp


def materialise(x):
    """x (a pytree of float arrays), computed once, on the CPU. XLA's CPU fusion copies chains of cheap ops
    (the PRNG's hash, ndtri's polynomials, a lookup's interpolation) into every fusion that reads them, once
    per reader; a division is an expensive op it never copies, so x / 1 (a 1 it cannot fold: exact) makes it
    store x once. jax.lax.optimization_barrier does not help here: the CPU pipeline removes it before fusion.
    Elsewhere x is returned as it is: on a GPU at large batch the recomputation is cheaper than the memory
    traffic of storing x (measured on an H200: the stored version ran 25 % slower at 1,048,576 envs)."""
    if jax.default_backend() != "cpu":
        return x
    return jax.tree.map(lambda a: a / (a == a).astype(a.dtype), x)


def last_axis_sum(x):
    """x summed over its (short, static) last axis as a chain of adds: XLA's CPU backend runs a reduction
    over a few elements as a separate library kernel that costs more than the step's arithmetic around it,
    while adds fuse with their neighbours."""
    return functools.reduce(operator.add, [x[..., i] for i in range(x.shape[-1])])


def last_axis_max(x):
    """x's maximum over its (short, static) last axis, as `last_axis_sum`."""
    return functools.reduce(jnp.maximum, [x[..., i] for i in range(x.shape[-1])])
