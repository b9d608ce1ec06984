"""A hand-written rule for a contended cloud (issue 14): offload everything while the cloud's published
wait is short, keep as much as fits on the edge when it is long.

    wait < threshold_s  ->  cloud-only (b = 0)
    otherwise           ->  edge-only (b = L; where the model does not fit, the env's projection keeps
                            the deepest allowed boundary, so the rest still runs on the cloud)

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
    """Cloud-only while the published cloud wait is below `threshold_s`, else as much as fits on the edge."""
    threshold_s: float = 5.0
    name: str = "wait_threshold"

    def init(self, env, env_params, spec=None, key=None):
        return {"threshold_s": jnp.float32(self.threshold_s), "edge_b": jnp.int32(env.n_layers),
                "units": jnp.ones(env.n_units, jnp.int32)}

    def __call__(self, pparams, key, obs, state, env_params, step_key):
        offload = state.cloud_wait_est < pparams["threshold_s"]
        return Action(boundary=jnp.where(offload, 0, pparams["edge_b"]).astype(jnp.int32), fmt=jnp.int32(0),
                      units=jnp.where(offload, 0, pparams["units"]).astype(jnp.int32))
