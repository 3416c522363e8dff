"""Putting kdflow's flows on a Prefect server: ``kdflow deploy`` and ``kdflow serve``.

``deployments/prefect.yaml`` is the one description of the deployments (pipeline, sweep, retrain
with its cron schedule), used both ways:

- ``deploy``: make sure the work pool (``kdflow-gpu`` of type process, or ``kdflow-docker`` /
  ``kdflow-k8s``, each with the base job template of :mod:`flows.pool_templates`, which gives flow
  runs their GPUs) and the task concurrency limit on the ``gpu`` tag (training stages carry it; one
  slot per GPU of the worker) exist, then apply the file with Prefect's own ``prefect deploy --all``
  from the repository root. For another pool than the file names, or extra job variables, the file
  is first rewritten to a temporary copy that names that pool and carries the variables in every
  deployment (``prefect deploy --all`` ignores ``--pool`` and ``--job-variable`` when it deploys
  several deployments). Workers (``prefect worker start --pool kdflow-gpu``) then run the flow runs.
- ``serve``: no pool, no worker: this process serves the same deployments (same parameters, tags
  and schedules) with ``prefect.serve`` and runs their flow runs itself, until stopped.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import yaml

from flows.pool_templates import DEFAULT_IMAGE, POOL_NAMES, POOL_TYPES, base_job_template
from kdcore.errors import ConfigError, KdflowError
from tasks import tag_limits

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO_ROOT / "deployments" / "prefect.yaml"
POOL = "kdflow-gpu"
GPU_TAG = "gpu"
HEALTH_PATIENCE = 30.0  # seconds a server that is up but slow to answer /health is waited for


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

    from flows.prefect_server import healthy

    url = PREFECT_API_URL.value()
    if not url:
        raise KdflowError(
            "no Prefect server configured: start one (`prefect server start`) and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (deployments need a server that stays up)"
        )
    if not healthy(url, patience=HEALTH_PATIENCE):  # a busy server answers late, not never
        raise KdflowError(
            f"the Prefect server at {url} (PREFECT_API_URL) does not answer: start it "
            "(`prefect server start`, or `kdflow server start`) or fix PREFECT_API_URL"
        )
    return url


def _slots(gpus: Optional[int]) -> int:
    """The gpu concurrency limit's slots: ``--gpus``, else the GPUs this machine sees."""
    if gpus is not None and gpus < 1:
        raise ConfigError(f"--gpus must be 1 or more (the slots of the gpu concurrency limit), got {gpus}")
    return gpus if gpus is not None else gpu_slots()


def ensure_pool(pool: str = POOL, pool_type: str = "process", image: str = DEFAULT_IMAGE) -> bool:
    """Create the work pool with kdflow's base job template for its type unless it exists; True if
    created. A pool of that type without kdflow's variables (one a worker created with Prefect's
    bare default) gets kdflow's template; a pool of another type is an error."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if pool_type not in POOL_TYPES:
        raise ConfigError(f"--pool-type {pool_type!r} is not one of {', '.join(POOL_TYPES)}")
    template = base_job_template(pool_type, image)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type, base_job_template=template))
                return True
            except ObjectAlreadyExists:  # created meanwhile, e.g. by a worker started for it: check that one
                existing = client.read_work_pool(pool)
        if existing.type != pool_type:
            raise ConfigError(
                f"work pool {pool} exists with type {existing.type}, not {pool_type}: "
                f"delete it (prefect work-pool delete {pool}) or deploy with --pool-type {existing.type}"
            )
        variables = (existing.base_job_template.get("variables") or {}).get("properties") or {}
        if "gpus" not in variables:
            client.update_work_pool(pool, WorkPoolUpdate(base_job_template=template))
        return False


def ensure_gpu_limit(slots: int, tag: str = GPU_TAG) -> int:
    """Set the task concurrency limit on ``tag`` to ``slots`` (what ``prefect concurrency-limit
    create gpu N`` does); returns the limit now in force."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=slots)  # creates or updates
        tag_limits.forget()
        return client.read_concurrency_limit_by_tag(tag).concurrency_limit


def parse_job_variables(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items (VALUE is JSON when it parses as JSON, else text) as a mapping."""
    import json

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--job-variable {item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    if "env" in out and not isinstance(out["env"], dict):
        raise ConfigError(
            f"--job-variable env={out['env']!r}: env must be a JSON object of variables, "
            'e.g. \'env={"KDFLOW_HOME": "/data"}\''
        )
    return out


def targeted_file(prefect_file: Path, pool: str, job_variables: dict[str, Any], dest: Path) -> Path:
    """A copy of ``prefect_file`` whose deployments all go to ``pool`` with ``job_variables`` merged
    over their own (``env`` merged key by key)."""
    doc = yaml.safe_load(Path(prefect_file).read_text()) or {}
    for spec in doc.get("deployments") or []:
        target = copy.deepcopy(spec.get("work_pool") or {})
        target["name"] = pool
        merged = dict(target.get("job_variables") or {})
        for key, value in job_variables.items():
            if key == "env" and isinstance(value, dict):
                merged["env"] = {**(merged.get("env") or {}), **value}
            else:
                merged[key] = value
        target["job_variables"] = merged
        spec["work_pool"] = target
    doc.pop("definitions", None)  # its anchors are resolved in each deployment above
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def apply_deployments(
    names: Optional[list[str]] = None,
    prefect_file: Path = PREFECT_FILE,
    timeout: float = 600,
    env: Optional[dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """``prefect deploy`` of the file's deployments, run from the repository root (entrypoints and
    the pull step's working directory are relative to it)."""
    cmd = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    cmd += [a for n in names for a in ("--name", n)] if names else ["--all"]
    env = {**os.environ, **(env or {})}
    env.setdefault("KDFLOW_REPO", str(REPO_ROOT))  # where workers find the code (the pull step)
    out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-15:])
        raise KdflowError(f"prefect deploy failed (exit {out.returncode}):\n{tail}")
    return out


def deploy(
    names: Optional[list[str]] = None,
    gpus: Optional[int] = None,
    pool_type: str = "process",
    prefect_file: Path = PREFECT_FILE,
    image: Optional[str] = None,
    job_variables: Optional[dict[str, Any]] = None,
    pool: Optional[str] = None,
) -> dict[str, Any]:
    """Pool, GPU limit, deployments. Returns what was done.

    ``pool_type`` docker or kubernetes (or ``image``/``job_variables`` given): the deployments go to
    that type's pool (``kdflow-docker``, ``kdflow-k8s``) with the variables, e.g. ``{"gpus": 2}``."""
    if pool_type not in POOL_TYPES:
        raise ConfigError(f"--pool-type {pool_type!r} is not one of {', '.join(POOL_TYPES)}")
    _slots(gpus)  # checked before anything is created
    api = _api_url()
    specs = read_specs(prefect_file, names)
    pool = pool or POOL_NAMES[pool_type]
    variables = dict(job_variables or {})
    if image:
        if pool_type == "process":
            raise ConfigError("--image is for docker and kubernetes pools; a process pool runs the worker's checkout")
        variables["image"] = image
    created = ensure_pool(pool, pool_type, image or DEFAULT_IMAGE)
    slots = ensure_gpu_limit(_slots(gpus))
    selected = [s["name"] for s in specs] if names else None
    extra_env = {} if pool_type == "process" else {"KDFLOW_REPO": os.environ.get("KDFLOW_REPO", "/opt/kdflow")}
    if pool == POOL and not variables:
        apply_deployments(selected, prefect_file, env=extra_env)
    else:
        with tempfile.TemporaryDirectory(prefix="kdflow-deploy-") as tmp:
            target = targeted_file(prefect_file, pool, variables, Path(tmp) / "prefect.yaml")
            apply_deployments(selected, target, env=extra_env)
    return {
        "api": api,
        "pool": pool,
        "pool_type": pool_type,
        "pool_created": created,
        "gpu_limit": slots,
        "job_variables": variables,
        "deployments": [s["name"] for s in specs],
    }


def runner_deployments(names: Optional[list[str]] = None, prefect_file: Path = PREFECT_FILE) -> list:
    """The file's deployments as ``RunnerDeployment`` objects for ``prefect.serve`` (parameters,
    tags, description, concurrency limit and schedules as in the file; the pool is not used)."""
    from prefect.flows import Flow, load_flow_from_entrypoint

    out = []
    cwd = Path.cwd()
    os.chdir(REPO_ROOT)  # entrypoints are relative to the repository root
    try:
        for spec in read_specs(prefect_file, names):
            flow: Flow[..., Any] = load_flow_from_entrypoint(spec["entrypoint"], use_placeholder_flow=False)
            schedules = [_schedule(s) for s in spec.get("schedules") or []]
            out.append(
                flow.to_deployment(
                    name=spec["name"],
                    parameters=spec.get("parameters") or {},
                    tags=spec.get("tags"),
                    description=spec.get("description"),
                    schedules=schedules or None,
                    concurrency_limit=spec.get("concurrency_limit"),
                )
            )
    finally:
        os.chdir(cwd)
    return out


def _schedule(item: dict[str, Any]):
    from prefect.schedules import Cron, Interval

    if "cron" in item:
        return Cron(
            item["cron"],
            timezone=item.get("timezone"),
            active=item.get("active", True),
            parameters=item.get("parameters") or {},
        )
    if "interval" in item:
        return Interval(item["interval"], active=item.get("active", True), parameters=item.get("parameters") or {})
    raise ConfigError(f"schedule {item} has neither cron nor interval")


def serve(
    names: Optional[list[str]] = None,
    limit: Optional[int] = None,
    gpus: Optional[int] = None,
    prefect_file: Path = PREFECT_FILE,
) -> None:
    """Serve the deployments from this process until interrupted (schedules included)."""
    from prefect import serve as prefect_serve

    _api_url()
    ensure_gpu_limit(_slots(gpus))
    deployments = runner_deployments(names, prefect_file)
    os.chdir(REPO_ROOT)  # the served flows read configs/ relative to the repository
    prefect_serve(*deployments, limit=limit)
