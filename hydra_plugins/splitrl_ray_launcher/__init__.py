"""splitrl's Hydra launcher for Ray: `splitrl-train --multirun hydra/launcher=ray ...` runs each job
as a Ray task on a local or remote Ray cluster (docs/scaling.md). Hydra finds it through the
`hydra_plugins` namespace package; its config node is `hydra/launcher: splitrl_ray`."""
