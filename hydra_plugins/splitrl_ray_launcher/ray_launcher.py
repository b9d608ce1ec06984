"""A Hydra launcher that runs each job of a sweep as a Ray task.

Why our own (about 100 lines) and not `hydra-ray-launcher`: its newest release (1.2.2) requires
`cloudpickle<3`, and splitrl pins `cloudpickle==3.1.2` (requirements.lock); it also pulls boto3 and
`ray[default]` for its AWS autoscaler mode. This launcher uses Ray's public API only (`ray.init`,
`ray.remote`, `ray.wait`), so it works with any Ray 2.x cluster: a private instance on this machine,
a cluster this machine joined (`address=auto`), a GCS address, or Ray Client (`ray://`).

Each job: the same steps as Hydra's basic and joblib launchers (`load_sweep_config`, job id/num,
`run_job` in the sweep's job dir), inside a Ray task with the resources of `remote`. A job that
raises or calls `sys.exit` comes back as a failed JobReturn; the sweep reports it as Hydra does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class JobExited(RuntimeError):
    """A job called sys.exit with a non-zero code (splitrl-train does for a config error)."""


def _execute_job(idx: int, overrides: Sequence[str], hydra_context: HydraContext, config: DictConfig,
                 task_function: TaskFunction, singleton_state: dict[Any, Any]) -> tuple[JobReturn, dict[str, Any]]:
    """Runs in a Ray worker: one Hydra job, as the basic launcher runs it."""
    import ray
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job
    from omegaconf import open_dict

    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
             "pid": os.getpid()}
    try:
        ret = run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except SystemExit as e:   # not an Exception, so run_job lets it through; Ray would kill the worker
        ret = JobReturn(overrides=list(overrides), cfg=sweep_config, hydra_cfg=sweep_config,
                        status=JobStatus.COMPLETED if e.code in (None, 0) else JobStatus.FAILED)
        if ret.status == JobStatus.FAILED:
            ret.return_value = JobExited(f"job #{idx} ({' '.join(overrides)}) exited with code {e.code}; "
                                         f"its error is in the job's output (lines marked pid={os.getpid()})")
    return ret, where


class RayLauncher(Launcher):
    def __init__(self, address: Any = None, num_cpus: Any = None, num_gpus: Any = None,
                 runtime_env: Any = None, init: Any = None, remote: Any = None) -> None:
        self.address = address
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.runtime_env = _plain(runtime_env) or {}
        self.init = _plain(init) or {}
        self.remote = _plain(remote) or {}
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def connect(self) -> str:
        """ray.init once per sweep process (the Optuna sweeper calls launch() once per batch)."""
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")   # no usage report to the internet
        if self.address in (None, "", "local"):
            # a private instance serves this machine only: bind it to loopback, not the host's address
            # (read by ray when it is first imported; inherited by the processes it starts)
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray
        except ImportError as e:
            raise ImportError("hydra/launcher=ray needs ray, which is not installed: pip install -c "
                              "requirements.lock -e '.[scale]' (scripts/setup does), or pick another launcher "
                              "(hydra/launcher=basic | parallel)") from e
        if not ray.is_initialized():
            kwargs: dict[str, Any] = dict(self.init)
            if self.runtime_env:
                kwargs["runtime_env"] = self.runtime_env
            if self.address in (None, "", "local"):
                kwargs.setdefault("include_dashboard", False)   # core ray has no dashboard
                kwargs |= {k: v for k, v in (("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus))
                           if v is not None}
                ray.init(**kwargs)
            else:
                if self.num_cpus is not None or self.num_gpus is not None:
                    raise ValueError("hydra.launcher.num_cpus / num_gpus size a private Ray instance; with "
                                     f"hydra.launcher.address = {self.address!r} the cluster has its own "
                                     "resources: set hydra.launcher.remote.num_cpus / num_gpus per job instead")
                ray.init(address=self.address, **kwargs)
        return str(ray.get_runtime_context().gcs_address)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        address = self.connect()
        import ray
        log.info(f"Ray launcher: {len(job_overrides)} job(s) on the Ray cluster at {address}, each with "
                 f"{self.remote}; sweep output dir: {sweep_dir}")
        for i, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(overrides))}")
        options = dict(self.remote)
        max_calls = options.pop("max_calls", None)   # a property of the remote function, not an option
        task = (ray.remote(max_calls=max_calls)(_execute_job) if max_calls else ray.remote(_execute_job)).options(
            **options)
        singleton_state = Singleton.get_state()
        futures = [task.remote(initial_job_idx + i, list(overrides), self.hydra_context, self.config,
                               self.task_function, singleton_state)
                   for i, overrides in enumerate(job_overrides)]
        index = {f: i for i, f in enumerate(futures)}
        results: list[JobReturn | None] = [None] * len(futures)
        pending, start = list(futures), time.monotonic()
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            i = index[done[0]]
            try:
                ret, where = ray.get(done[0])
                on = f"on ray node {where['node_id']} ({where['node_ip']}, pid {where['pid']})"
            except ray.exceptions.RayError as e:   # the task itself died (node lost, OOM-killed, retries spent)
                ret = JobReturn(overrides=list(job_overrides[i]), status=JobStatus.FAILED)
                ret.return_value, on = e, f"in Ray: {type(e).__name__}"
            results[i] = ret   # the other jobs go on; the sweeper reports failures when all are back
            log.info(f"\t#{initial_job_idx + i} {ret.status.name.lower()} after {time.monotonic() - start:.0f} s {on}")
        return results  # type: ignore[return-value]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
