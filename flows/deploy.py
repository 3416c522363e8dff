"""Putting kdflow's flows on a Prefect server: ``kdflow deploy`` and ``kdflow serve``.

``deployments/prefect.yaml`` is the one description of the deployments (pipeline, sweep, retrain
with its cron schedule), used both ways:

- ``deploy``: make sure the process work pool ``kdflow-gpu`` and the task concurrency limit on the
  ``gpu`` tag (training stages carry it; one slot per GPU of the worker) exist, then apply the file
  with Prefect's own ``prefect deploy --all --prefect-file deployments/prefect.yaml`` from the
  repository root. Workers (``prefect worker start --pool kdflow-gpu``) then run the flow runs.
- ``serve``: no pool, no worker: this process serves the same deployments (same parameters, tags
  and schedules) with ``prefect.serve`` and runs their flow runs itself, until stopped.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import yaml

from kdcore.errors import ConfigError, KdflowError

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO_ROOT / "deployments" / "prefect.yaml"
POOL = "kdflow-gpu"
GPU_TAG = "gpu"


def gpu_slots() -> int:
    """GPUs this machine's CUDA sees (``CUDA_VISIBLE_DEVICES`` honoured); 1 on a CPU-only machine."""
    import torch

    return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1


def read_specs(prefect_file: Path = PREFECT_FILE, names: Optional[list[str]] = None) -> list[dict[str, Any]]:
    """The deployments of ``prefect_file`` (all, or those named)."""
    if not Path(prefect_file).is_file():
        raise ConfigError(f"deployment file {prefect_file} does not exist")
    specs = (yaml.safe_load(Path(prefect_file).read_text()) or {}).get("deployments") or []
    if names:
        known = [s.get("name") for s in specs]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"unknown deployment(s) {', '.join(unknown)}; {prefect_file.name} has {', '.join(known)}")
        specs = [s for s in specs if s.get("name") in names]
    return specs


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise KdflowError("no Prefect server configured: start one (`prefect server start`) and set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api (deployments need a server that stays up)")
    return url


def ensure_pool(pool: str = POOL, pool_type: str = "process") -> bool:
    """Create the work pool (with its type's default job template) unless it exists; True if created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            pass
        template: dict[str, Any] = {}
        if pool_type == "process":
            from prefect.workers.process import ProcessWorker

            template = ProcessWorker.get_default_base_job_template()
        client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type, base_job_template=template))
        return True


def ensure_gpu_limit(slots: int, tag: str = GPU_TAG) -> int:
    """Set the task concurrency limit on ``tag`` to ``slots`` (what ``prefect concurrency-limit
    create gpu N`` does); returns the limit now in force."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=slots)  # creates or updates
        return client.read_concurrency_limit_by_tag(tag).concurrency_limit


def apply_deployments(names: Optional[list[str]] = None, prefect_file: Path = PREFECT_FILE,
                      timeout: float = 600) -> subprocess.CompletedProcess:
    """``prefect deploy`` of the file's deployments, run from the repository root (entrypoints and
    the pull step's working directory are relative to it)."""
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    cmd += [a for n in names for a in ("--name", n)] if names else ["--all"]
    env = {**os.environ}
    env.setdefault("KDFLOW_REPO", str(REPO_ROOT))  # where workers find the code (the pull step)
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise KdflowError(f"prefect deploy failed (exit {out.returncode}):\n{tail}")
    return out


def deploy(names: Optional[list[str]] = None, gpus: Optional[int] = None, pool_type: str = "process",
           prefect_file: Path = PREFECT_FILE) -> dict[str, Any]:
    """Pool, GPU limit, deployments. Returns what was done."""
    api = _api_url()
    specs = read_specs(prefect_file, names)
    created = ensure_pool(POOL, pool_type)
    slots = ensure_gpu_limit(gpus if gpus is not None else gpu_slots())
    apply_deployments([s["name"] for s in specs] if names else None, prefect_file)
    return {"api": api, "pool": POOL, "pool_created": created, "gpu_limit": slots,
            "deployments": [s["name"] for s in specs]}


def runner_deployments(names: Optional[list[str]] = None, prefect_file: Path = PREFECT_FILE) -> list:
    """The file's deployments as ``RunnerDeployment`` objects for ``prefect.serve`` (parameters,
    tags, description, concurrency limit and schedules as in the file; the pool is not used)."""
    from prefect.flows import load_flow_from_entrypoint

    out = []
    cwd = Path.cwd()
    os.chdir(REPO_ROOT)  # entrypoints are relative to the repository root
    try:
        for spec in read_specs(prefect_file, names):
            flow = load_flow_from_entrypoint(spec["entrypoint"], use_placeholder_flow=False)
            schedules = [_schedule(s) for s in spec.get("schedules") or []]
            out.append(flow.to_deployment(
                name=spec["name"], parameters=spec.get("parameters") or {}, tags=spec.get("tags"),
                description=spec.get("description"), schedules=schedules or None,
                concurrency_limit=spec.get("concurrency_limit")))
    finally:
        os.chdir(cwd)
    return out


def _schedule(item: dict[str, Any]):
    from prefect.schedules import Cron, Interval

    if "cron" in item:
        return Cron(item["cron"], timezone=item.get("timezone"), active=item.get("active", True),
                    parameters=item.get("parameters") or {})
    if "interval" in item:
        return Interval(item["interval"], active=item.get("active", True), parameters=item.get("parameters") or {})
    raise ConfigError(f"schedule {item} has neither cron nor interval")


def serve(names: Optional[list[str]] = None, limit: Optional[int] = None, gpus: Optional[int] = None,
          prefect_file: Path = PREFECT_FILE) -> None:
    """Serve the deployments from this process until interrupted (schedules included)."""
    from prefect import serve as prefect_serve

    _api_url()
    ensure_gpu_limit(gpus if gpus is not None else gpu_slots())
    deployments = runner_deployments(names, prefect_file)
    os.chdir(REPO_ROOT)  # the served flows read configs/ relative to the repository
    prefect_serve(*deployments, limit=limit)
