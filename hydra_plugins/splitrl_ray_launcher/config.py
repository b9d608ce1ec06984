"""The launcher's config node (`hydra/launcher: splitrl_ray`); splitrl/conf/hydra/launcher/ray.yaml sets
splitrl's defaults on top of it."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SplitrlRayLauncherConf:
    _target_: str = "hydra_plugins.splitrl_ray_launcher.ray_launcher.RayLauncher"
    # null: start a private Ray instance on this machine for the sweep (stopped with the sweep);
    # "auto": the cluster this machine joined with `ray start`; "HOST:PORT": a cluster's GCS address;
    # "ray://HOST:10001": Ray Client (needs ray[client] here and on the cluster)
    address: Any = None
    # CPUs / GPUs of the private instance (address null); null: Ray detects them
    num_cpus: Any = None
    num_gpus: Any = None
    # Ray runtime_env for the sweep's jobs: env_vars, working_dir, py_modules, pip, ...
    runtime_env: dict[str, Any] = field(default_factory=dict)
    # any other keyword of ray.init (namespace, _temp_dir, ...)
    init: dict[str, Any] = field(default_factory=dict)
    # options of each job's Ray task (ray.remote): resources it reserves, retries. max_calls=1: each job
    # runs in a fresh worker process, so its JAX runtime, compiled programs and memory go with it.
    remote: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1, "num_gpus": 0, "max_calls": 1,
                                                             "max_retries": 0})


ConfigStore.instance().store(group="hydra/launcher", name="splitrl_ray", node=SplitrlRayLauncherConf,
                             provider="splitrl")
