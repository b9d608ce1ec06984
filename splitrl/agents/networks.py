"""Flax networks and the two policies PPO trains: hierarchical (manager + worker) and flat.

A *policy* is a small static object with pure methods over one unbatched observation (PPO `vmap`s):
    init(key, obs) -> params
    sample(params, obs, key) -> (action, log_prob, value)
    evaluate(params, obs, action) -> (log_prob, entropy, value)
    value(params, obs) -> value
    sample_uniform(obs, key) -> action      # the random-policy baseline (uniform over allowed choices)
    greedy(params, obs) -> action           # the most likely action, for evaluation

Critic: `critic="separate"` gives the value its own MLP on the features; `"shared"` puts the value
head on the manager's (or the flat actor's) torso. See docs/training.md for the measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from splitrl.agents import distributions as D
from splitrl.agents.config import CRITICS


def orthogonal(scale: float = 1.0):
    """Orthogonal kernel init (Saxe et al.; PPO's usual init), the same matrix as
    `jax.nn.initializers.orthogonal(scale)` gives for a 2-D kernel, computed by Gram-Schmidt with
    re-orthogonalisation in plain XLA ops instead of LAPACK QR.

    Why: under `vmap` (one init per seed, PureJaxRL-style) the LAPACK QR becomes a batched custom
    call that jaxlib 0.10.2 spreads over its CPU thread pool, and on a 2-core host that program
    deadlocks at random (gdb: jax::ParallelBatchMap waiting on a BlockingCounter inside
    lapack_sgeqrf_ffi, every other thread idle). QR with a positive R diagonal is unique, so Gram-
    Schmidt gives the same Haar-distributed Q up to rounding.

    The loop body is one module-level function (`_gram_schmidt_column`), not a closure over `a`: an
    eager init (flax's `net.init` outside jit, e.g. loading a trained run or Chen's surrogate) then
    compiles the loop once per kernel shape instead of once per call (~0.8 s a layer on 2 cores)."""

    def init(key, shape, dtype=jnp.float32):
        if len(shape) != 2:
            raise ValueError(f"orthogonal init is for 2-D kernels, got shape {shape}")
        rows, cols = shape
        tall = (rows, cols) if rows >= cols else (cols, rows)
        a = jax.random.normal(key, tall, jnp.float32)
        _, q = jax.lax.fori_loop(0, tall[1], _gram_schmidt_column, (a, jnp.zeros(tall, jnp.float32)))
        q = q if rows >= cols else q.T
        return (scale * q).astype(dtype)

    return init


def _gram_schmidt_column(j, carry):
    """Column j of Q from column j of `a` ((a, q) -> (a, q)): the loop body of `orthogonal`."""
    a, q = carry
    v = a[:, j]
    for _ in range(2):                    # twice is enough (Giraud et al., "CGS2")
        v = v - q @ (q.T @ v)             # columns not yet filled are zero
    return a, q.at[:, j].set(v / jnp.linalg.norm(v))


class MLP(nn.Module):
    hidden: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.tanh(nn.Dense(width, kernel_init=orthogonal(np.sqrt(2.0)))(x))
        return x


def head(width: int, scale: float) -> nn.Dense:
    return nn.Dense(width, kernel_init=orthogonal(scale))


def transposed_kernel_dot(inputs, kernel, dimension_numbers, precision=None, preferred_element_type=None):
    """`nn.Dense`'s product `inputs @ kernel` with the kernel read as its transpose [out, in]. Why: the kernel's
    gradient is then a product into [out, in]; into [in, out] (what autodiff of the plain product gives) XLA:CPU
    runs it as a slow Eigen dot when `out` is a few units: a 64x3 head's forward and backward over 2,048
    samples 313 -> 70 us on this CPU (64x8: 280 -> 116 us; no gain from 16 outputs on). The barrier keeps
    XLA from folding the transpose back into the product."""
    if dimension_numbers != (((inputs.ndim - 1,), (0,)), ((), ())):   # only nn.Dense's contraction is written here
        raise ValueError(f"transposed_kernel_dot: dimension_numbers {dimension_numbers} are not nn.Dense's")
    kernel_t = jax.lax.optimization_barrier(kernel.T)
    return jnp.einsum("oi,...i->...o", kernel_t, inputs, precision=precision,
                      preferred_element_type=preferred_element_type)


def narrow_head(width: int, scale: float) -> nn.Dense:
    """`head` (the same parameters) for a few outputs: see `transposed_kernel_dot`."""
    return nn.Dense(width, kernel_init=orthogonal(scale), dot_general=transposed_kernel_dot)


class HierarchicalNet(nn.Module):
    num_boundaries: int
    num_formats: int
    num_units: int
    hidden: Sequence[int]
    critic: str

    def setup(self):
        self.manager_torso = MLP(self.hidden)
        self.boundary_head = head(self.num_boundaries, 0.01)
        self.format_head = narrow_head(self.num_formats, 0.01)
        self.worker_torso = MLP(self.hidden)
        self.unit_head = narrow_head(self.num_units + 1, 0.01)   # [split gate, one edge logit per unit]
        if self.critic == "separate":
            self.critic_torso = MLP(self.hidden)
        self.value_head = head(1, 1.0)

    def manager(self, obs):
        """Masked boundary and format logits, and the state value."""
        z = self.manager_torso(obs.features)
        boundary = D.mask_logits(self.boundary_head(z), obs.boundary_mask)
        fmt = D.mask_logits(self.format_head(z), obs.format_mask)
        zv = self.critic_torso(obs.features) if self.critic == "separate" else z
        return boundary, fmt, self.value_head(zv)[0]

    def worker(self, obs, boundary, fmt):
        """[whole, split] logits and per-unit [cloud, edge] logits for the boundary layer, conditioned
        on the manager's (b, f)."""
        allowed = obs.unit_mask[boundary]
        x = jnp.concatenate([obs.features, jax.nn.one_hot(boundary, self.num_boundaries),
                             jax.nn.one_hot(fmt, self.num_formats), allowed.astype(jnp.float32)])
        out = self.unit_head(self.worker_torso(x))
        return D.split_logits(out[0], allowed), D.unit_logits_two_way(out[1:], allowed)

    def __call__(self, obs):   # used by init only: touches every parameter
        boundary, fmt, value = self.manager(obs)
        return self.worker(obs, jnp.argmax(boundary), jnp.argmax(fmt)), value


class HierarchicalPolicy:
    """Manager picks (boundary, format); the worker places each unit of the boundary layer."""

    def __init__(self, num_boundaries: int, num_formats: int, num_units: int,
                 hidden: Sequence[int], critic: str):
        if critic not in CRITICS:
            raise ValueError(f"critic = {critic!r}: must be one of {CRITICS}")
        self.net = HierarchicalNet(num_boundaries, num_formats, num_units, tuple(hidden), critic)
        self.num_units = num_units

    def init(self, key, obs):
        return self.net.init(key, obs)

    def _logits(self, params, obs, boundary, fmt, boundary_logits, fmt_logits):
        split, units = self.net.apply(params, obs, boundary, fmt, method=HierarchicalNet.worker)
        return D.HierarchicalLogits(boundary=boundary_logits, fmt=fmt_logits, split=split, units=units)

    def sample(self, params, obs, key):
        kb, kf, kg, ku = jax.random.split(key, 4)
        b_logits, f_logits, value = self.net.apply(params, obs, method=HierarchicalNet.manager)
        boundary = D.categorical(kb, b_logits)
        fmt = D.categorical(kf, f_logits)
        logits = self._logits(params, obs, boundary, fmt, b_logits, f_logits)
        split = D.categorical(kg, logits.split).astype(jnp.int32)
        units = split * D.categorical(ku, logits.units).astype(jnp.int32)
        action = D.HierarchicalAction(boundary=boundary.astype(jnp.int32), fmt=fmt.astype(jnp.int32),
                                      split=split, units=units)
        return action, D.log_prob(logits, action), value

    def evaluate(self, params, obs, action):
        b_logits, f_logits, value = self.net.apply(params, obs, method=HierarchicalNet.manager)
        logits = self._logits(params, obs, action.boundary, action.fmt, b_logits, f_logits)
        return D.log_prob(logits, action), D.entropy(logits), value

    def value(self, params, obs):
        return self.net.apply(params, obs, method=HierarchicalNet.manager)[2]

    def sample_uniform(self, obs, key):
        """Uniform over boundary, format and each unit's place (the gate is implied: split iff a unit
        is on the edge), so the random baseline is the same as before the gate existed."""
        kb, kf, ku = jax.random.split(key, 3)
        boundary = jax.random.categorical(kb, D.mask_logits(jnp.zeros(obs.boundary_mask.shape), obs.boundary_mask))
        fmt = jax.random.categorical(kf, D.mask_logits(jnp.zeros(obs.format_mask.shape), obs.format_mask))
        units = jax.random.categorical(
            ku, D.unit_logits_two_way(jnp.zeros(self.num_units), obs.unit_mask[boundary])).astype(jnp.int32)
        return D.HierarchicalAction(boundary=boundary.astype(jnp.int32), fmt=fmt.astype(jnp.int32),
                                    split=jnp.any(units > 0).astype(jnp.int32), units=units)

    def update_scale(self, params, manager_scale):
        """Per-parameter step-size factors: `manager_scale` on the manager (torso and heads), 1 elsewhere
        (the two-timescale variant; 1.0 everywhere is one objective on one timescale)."""
        def scale(path, _):
            names = {getattr(k, "key", None) for k in path}
            return manager_scale if names & {"manager_torso", "boundary_head", "format_head"} else 1.0
        return jax.tree_util.tree_map_with_path(scale, params)

    def greedy(self, params, obs):
        b_logits, f_logits, _ = self.net.apply(params, obs, method=HierarchicalNet.manager)
        boundary, fmt = D.argmax(b_logits), D.argmax(f_logits)
        split, units = self.net.apply(params, obs, boundary, fmt, method=HierarchicalNet.worker)
        split = D.argmax(split).astype(jnp.int32)
        return D.HierarchicalAction(boundary=boundary.astype(jnp.int32), fmt=fmt.astype(jnp.int32),
                                    split=split, units=split * D.argmax(units, axis=-1).astype(jnp.int32))


def flat_features_and_mask(obs, num_actions: int):
    """A flat observation is either a plain f32 vector (gymnax classic control: every action allowed)
    or a pytree with `features` and `action_mask` (`splitrl.env.FlatSplitEnv`)."""
    if hasattr(obs, "action_mask"):
        return obs.features, obs.action_mask
    chex.assert_rank(obs, 1)
    return obs, jnp.ones((num_actions,), bool)


class FlatNet(nn.Module):
    num_actions: int
    hidden: Sequence[int]
    critic: str

    @nn.compact
    def __call__(self, features):
        z = MLP(self.hidden, name="actor_torso")(features)
        logits = head(self.num_actions, 0.01)(z)
        zv = MLP(self.hidden, name="critic_torso")(features) if self.critic == "separate" else z
        return logits, head(1, 1.0)(zv)[0]


class FlatPolicy:
    """One masked categorical over Discrete(num_actions)."""

    def __init__(self, num_actions: int, hidden: Sequence[int], critic: str):
        if critic not in CRITICS:
            raise ValueError(f"critic = {critic!r}: must be one of {CRITICS}")
        self.net = FlatNet(num_actions, tuple(hidden), critic)
        self.num_actions = num_actions

    def init(self, key, obs):
        return self.net.init(key, flat_features_and_mask(obs, self.num_actions)[0])

    def _dist(self, params, obs):
        features, mask = flat_features_and_mask(obs, self.num_actions)
        logits, value = self.net.apply(params, features)
        return D.masked_categorical(logits, mask), value

    def sample(self, params, obs, key):
        dist, value = self._dist(params, obs)
        action = dist.sample(seed=key).astype(jnp.int32)
        return action, dist.log_prob(action), value

    def evaluate(self, params, obs, action):
        dist, value = self._dist(params, obs)
        return dist.log_prob(action), dist.entropy(), value

    def value(self, params, obs):
        return self._dist(params, obs)[1]

    def sample_uniform(self, obs, key):
        _, mask = flat_features_and_mask(obs, self.num_actions)
        return jax.random.categorical(key, D.mask_logits(jnp.zeros(mask.shape), mask)).astype(jnp.int32)

    def update_scale(self, params, manager_scale):
        return jax.tree.map(lambda _: 1.0, params)

    def greedy(self, params, obs):
        return jnp.argmax(self._dist(params, obs)[0].logits).astype(jnp.int32)
