"""splitrl.agents.shuffle gives jax.random's permutation and choice(replace=False) integers exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from splitrl.agents import shuffle


@pytest.mark.parametrize("n", [1, 2, 7, 300, 8192])
def test_permutation_and_choice_are_jax_randoms(n):
    for seed in range(5):
        key = jax.random.PRNGKey(seed)
        np.testing.assert_array_equal(shuffle.permutation(key, n), jax.random.permutation(key, n))
        k = min(n, 64)
        np.testing.assert_array_equal(shuffle.choice_without_replacement(key, n, k),
                                      jax.random.choice(key, n, (k,), replace=False))


def test_stable_argsort_keeps_ties_in_index_order():
    keys = jax.random.randint(jax.random.PRNGKey(0), (4096,), 0, 40).astype(jnp.uint32)   # ~100 per value
    np.testing.assert_array_equal(shuffle.stable_argsort(keys), np.argsort(np.asarray(keys), kind="stable"))
    wide = jax.random.bits(jax.random.PRNGKey(1), (70_000,), jnp.uint32)   # past the packed limit: jax's sort
    np.testing.assert_array_equal(shuffle.stable_argsort(wide), np.argsort(np.asarray(wide), kind="stable"))
