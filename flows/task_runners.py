"""The Prefect task runner a sweep's trials run on: threads, a Ray cluster or a Dask cluster.

- ``thread`` (default): ``ThreadPoolTaskRunner`` with ``sweep.max_workers`` threads (default: one
  per trial) in the flow's process.
- ``ray``: ``prefect_ray.RayTaskRunner``. Without ``sweep.address`` a local Ray cluster is started
  with ``sweep.max_workers`` CPUs (default: Ray's own count); with ``address`` (``ray://host:10001``
  or ``auto``) the trials run on that cluster.
- ``dask``: ``prefect_dask.DaskTaskRunner``. Without ``address`` a ``distributed.LocalCluster`` of
  ``sweep.max_workers`` worker processes (default 2), one thread each; with ``address``
  (``tcp://scheduler:8786``) the trials run on that cluster.

Every stage and trial then asks the cluster for ``gpus_per_trial`` GPUs: Ray's ``num_gpus``, a
Dask ``GPU`` resource (a local Dask cluster gives each worker one ``GPU`` resource per visible GPU;
the workers of an existing cluster declare theirs with ``dask worker --resources GPU=1``). When
``gpus_per_trial`` is 0 and the trials train on CUDA (``trainer.device`` cuda, or auto on a machine
that has CUDA), each asks for one GPU. The packages are imported only when chosen:
``pip install 'kdflow[ray]'`` or ``'kdflow[dask]'``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from kdcore.config import SweepConfig, TrainerConfig
from kdcore.errors import ConfigError

DASK_LOCAL_WORKERS = 2


def gpus_per_trial(sweep: SweepConfig, trainer: TrainerConfig) -> float:
    """GPUs each trial asks of the cluster: ``sweep.gpus_per_trial``, else 1 when training on CUDA."""
    if sweep.gpus_per_trial:
        return sweep.gpus_per_trial
    if trainer.device.startswith("cuda"):
        return 1.0
    if trainer.device == "auto":
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0
    return 0.0


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def make_task_runner(sweep: SweepConfig, n_trials: int, gpus: float = 0.0):
    """The Prefect task runner of the trials; Ray and Dask are imported only when chosen."""
    if sweep.task_runner == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=sweep.max_workers or max(n_trials, 1))
    if sweep.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise ConfigError(
                "sweep.task_runner 'ray' needs the prefect-ray package: pip install 'kdflow[ray]' "
                "(or use task_runner: thread)"
            ) from None
        if sweep.address:
            return RayTaskRunner(address=sweep.address)
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if sweep.max_workers:
            init["num_cpus"] = sweep.max_workers
        return RayTaskRunner(init_kwargs=init)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ConfigError(
            "sweep.task_runner 'dask' needs the prefect-dask package: pip install 'kdflow[dask]' "
            "(or use task_runner: thread)"
        ) from None
    if sweep.address:
        return DaskTaskRunner(address=sweep.address)
    workers = sweep.max_workers or DASK_LOCAL_WORKERS
    cluster: dict[str, Any] = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
    }
    if gpus:
        cluster["resources"] = {"GPU": max(_visible_gpus(), 1)}
    return DaskTaskRunner(cluster_kwargs=cluster)


def trial_resources(sweep: SweepConfig, gpus: float):
    """Submissions inside this context ask the cluster for ``gpus`` GPUs each."""
    if not gpus or sweep.task_runner == "thread":
        return contextlib.nullcontext()
    if sweep.task_runner == "ray":
        from prefect_ray.context import remote_options

        return remote_options(num_gpus=gpus)
    import dask

    return dask.annotate(resources={"GPU": gpus})
