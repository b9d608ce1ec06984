"""A hand-written rule for a contended cloud (issue 14): offload everything while the cloud's published
wait is short; when it is long, a device that holds the whole model runs it alone.

    wait < threshold_s               ->  cloud-only (b = 0)
    otherwise, the model fits        ->  edge-only (b = L)
    otherwise, the model does not    ->  cloud-only: a partial split still waits in the same cloud queue
                                         and pays a round trip per token (docs/fleet.md measures 21-25 s per
                                         request for fixed splits, against ~1-2 s cloud-only when idle)

The wait is what the cloud publishes (`state.cloud_wait_est`, the observation's `cloud_wait` feature):
the shared queue's W / C in the fleet, the Erlang-C expectation in the single-device env. The threshold
is data (`pparams`), so tuning it over a grid reuses one compiled rollout
(splitrl/evaluation/fleet.py tunes it on training episodes).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from splitrl.baselines.base import PolicyBase
from splitrl.env.types import Action


@dataclasses.dataclass(frozen=True)
class WaitThreshold(PolicyBase):
    """Cloud-only while the published cloud wait is below `threshold_s`, else edge-only where the model fits."""
    threshold_s: float = 5.0
    name: str = "wait_threshold"

    def init(self, env, env_params, spec=None, key=None):
        fits = env_params.costs.boundary_mask[-1]
        return {"threshold_s": jnp.float32(self.threshold_s), "edge_b": jnp.where(fits, env.n_layers, 0).astype(jnp.int32),
                "units": jnp.full(env.n_units, fits, jnp.int32)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        offload = state.cloud_wait_est < pparams["threshold_s"]
        return Action(boundary=jnp.where(offload, 0, pparams["edge_b"]).astype(jnp.int32), fmt=jnp.int32(0),
                      units=jnp.where(offload, 0, pparams["units"]).astype(jnp.int32))
