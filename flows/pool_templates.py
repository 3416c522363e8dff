"""Base job templates of kdflow's work pools: Prefect's own default for the worker type, plus the
variables that give a flow run its GPUs.

Every template starts from the worker's ``get_default_base_job_template()`` (so every variable
Prefect documents for that worker keeps working) and adds:

- ``gpus`` (integer): the GPUs each flow run gets. The flow run sees it as ``KDFLOW_GPUS``: its
  training stages then fail with a clear message when fewer CUDA devices are visible, instead of
  training on CPU (:func:`kdcore.train.device.resolve_device`).
  - docker: a ``device_requests`` entry (``count: gpus``, capabilities ``gpu``), what
    ``docker run --gpus N`` sends; the NVIDIA container toolkit must be installed on the host;
  - kubernetes: the container's ``resources.limits["nvidia.com/gpu"]`` (the NVIDIA device plugin's
    resource), so the scheduler places the pod on a node with free GPUs;
  - process: a process worker cannot allocate GPUs; ``gpus`` only states what the run needs
    (default 0: whatever the worker sees), and ``visible_devices`` sets ``CUDA_VISIBLE_DEVICES``.
- docker and kubernetes: ``image`` defaults to :data:`DEFAULT_IMAGE` (an image with this repository
  and its environment at ``/opt/kdflow``); ``env`` is Prefect's (merged over ``KDFLOW_GPUS``).

The worker packages are imported only for the pool type asked for (``pip install 'kdflow[deploy]'``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from kdcore.errors import ConfigError

if TYPE_CHECKING:
    from prefect.workers.base import BaseWorker

POOL_TYPES = ("process", "docker", "kubernetes")
POOL_NAMES = {"process": "kdflow-gpu", "docker": "kdflow-docker", "kubernetes": "kdflow-k8s"}
DEFAULT_IMAGE = "kdflow:latest"
GPU_RESOURCE = "nvidia.com/gpu"
GPUS_ENV = "KDFLOW_GPUS"

_PACKAGES = {
    "docker": ("prefect_docker.worker", "DockerWorker", "prefect-docker"),
    "kubernetes": ("prefect_kubernetes.worker", "KubernetesWorker", "prefect-kubernetes"),
    "process": ("prefect.workers.process", "ProcessWorker", "prefect"),
}


def worker_class(pool_type: str) -> type[BaseWorker[Any, Any, Any]]:
    """The Prefect worker class of ``pool_type`` (its package imported now, and only now)."""
    import importlib

    if pool_type not in _PACKAGES:
        raise ConfigError(f"pool type {pool_type!r} is not one of {', '.join(POOL_TYPES)}")
    module, name, package = _PACKAGES[pool_type]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ConfigError(
            f"a {pool_type} work pool needs the {package} package: "
            f"pip install {package} (or pip install 'kdflow[deploy]')"
        ) from None


def _gpus_variable(default: int, what: str) -> dict[str, Any]:
    return {
        "title": "GPUs",
        "type": "integer",
        "minimum": 0,
        "default": default,
        "description": f"GPUs each flow run gets ({what}); the run fails when fewer are visible to it (env {GPUS_ENV})",
    }


def base_job_template(pool_type: str, image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """Prefect's default base job template for ``pool_type`` with kdflow's GPU variables added."""
    template = copy.deepcopy(worker_class(pool_type).get_default_base_job_template())
    config, props = template["job_configuration"], template["variables"]["properties"]
    # The flow run's environment: KDFLOW_GPUS, then the `env` variable merged over it by Prefect.
    config["env"] = {GPUS_ENV: "{{ gpus }}"}
    if pool_type == "process":
        props["gpus"] = _gpus_variable(0, "0: whatever the worker's CUDA sees")
        props["visible_devices"] = {
            "title": "Visible devices",
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "default": None,
            "description": "CUDA_VISIBLE_DEVICES of the flow run (e.g. '0,1'); unset: the worker's",
        }
        config["env"]["CUDA_VISIBLE_DEVICES"] = "{{ visible_devices }}"
    elif pool_type == "docker":
        props["gpus"] = _gpus_variable(1, "device_requests count, as docker run --gpus N")
        props["image"]["default"] = image
        config["container_create_kwargs"] = {
            "device_requests": [{"driver": "nvidia", "count": "{{ gpus }}", "capabilities": [["gpu"]]}]
        }
    else:
        props["gpus"] = _gpus_variable(1, f"the container's {GPU_RESOURCE} limit")
        props["image"]["default"] = image
        container = config["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
        container.setdefault("resources", {}).setdefault("limits", {})[GPU_RESOURCE] = "{{ gpus }}"
    return template


async def job_configuration(pool_type: str, template: dict[str, Any], job_variables: dict[str, Any]):
    """The job configuration a worker of ``pool_type`` builds from ``template`` and a deployment's
    job variables (the worker's own configuration class; needs a Prefect API for block references)."""
    cls = worker_class(pool_type).job_configuration
    return await cls.from_template_and_values(template, job_variables)
