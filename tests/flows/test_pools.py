"""Work pools that give flow runs their GPUs.

`kdflow deploy --pool-type docker|kubernetes` against a real Prefect server creates the pool with
kdflow's base job template (Prefect's default for the worker type plus `gpus`) and sends every
deployment to it with its job variables. The job configuration each worker type builds from the
pool's template and a deployment's variables (the worker's own classes, as a worker does before
starting a flow run) then asks for the GPUs: `device_requests` for Docker (checked down to the
HostConfig the Docker SDK would send), `nvidia.com/gpu` limits for Kubernetes, CUDA_VISIBLE_DEVICES
for a process worker. No Docker daemon or Kubernetes cluster runs here, so this is where those
recipes are checked. A run that was given GPUs but sees none fails with one clear message.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
from pathlib import Path
from unittest import mock
from uuid import uuid4

import httpx
import pytest
import yaml

from conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
POOLS = {"docker": "kdflow-docker", "kubernetes": "kdflow-k8s"}


def render(pool_type: str, template: dict, job_variables: dict, api: str):
    """The worker's job configuration for one flow run, as the worker of ``pool_type`` prepares it."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pool_templates import job_configuration

    with temporary_settings({PREFECT_API_URL: api}):
        config = asyncio.run(job_configuration(pool_type, template, job_variables))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="a-run"))
    return config


def docker_host_config(config) -> dict:
    """The HostConfig the Docker SDK would send to the daemon for this job configuration."""
    from docker.models.containers import _create_container_args
    from prefect_docker.worker import DockerWorker

    client = mock.MagicMock()
    client.version.return_value = {"Version": "27.0.0"}
    settings = DockerWorker.__new__(DockerWorker)._build_container_settings(client, config)
    return _create_container_args({**settings, "version": "1.44"})["host_config"]


@pytest.fixture(scope="module")
def deployed(real_servers, tmp_path_factory):
    """`kdflow deploy` of the three deployments to a docker pool, then to a kubernetes pool (a
    deployment is one per flow and name: the second deploy moves them; each is read right after)."""
    from servers import client_env

    home = tmp_path_factory.mktemp("pools")
    env = client_env(real_servers["prefect"], real_servers["mlflow"].extra["uri"], home)
    api = real_servers["prefect"].extra["api"]
    outs, deps = {}, {}
    for pool_type, extra in (
        ("docker", ["-j", "gpus=2", "-j", 'env={"KDFLOW_HOME": "/data/kdflow"}']),
        ("kubernetes", []),
    ):
        outs[pool_type] = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "deploy",
                "--pool-type",
                pool_type,
                "--image",
                "registry.example.com/kdflow:1",
                "--gpus",
                "4",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        deps[pool_type] = _deployments(api, POOLS[pool_type])
    return outs, deps, api


def _get(api: str, path: str):
    r = httpx.get(f"{api}{path}", timeout=30)
    r.raise_for_status()
    return r.json()


def _deployments(api: str, pool: str) -> dict[str, dict]:
    r = httpx.post(f"{api}/deployments/filter", json={"work_pools": {"name": {"any_": [pool]}}}, timeout=30)
    r.raise_for_status()
    return {d["name"]: d for d in r.json()}


def test_docker_pool_gets_gpu_device_requests(deployed):
    outs, deployments, api = deployed
    out = outs["docker"]
    assert out.returncode == 0, out.stdout + out.stderr
    assert "work pool kdflow-docker (docker): created" in out.stdout
    pool = _get(api, "/work_pools/kdflow-docker")
    assert pool["type"] == "docker"
    props = pool["base_job_template"]["variables"]["properties"]
    assert props["gpus"]["default"] == 1 and "image" in props and "volumes" in props  # Prefect's own kept
    deps = deployments["docker"]
    assert set(deps) == {"pipeline", "sweep", "retrain"}, "every deployment went to the docker pool"
    for dep in deps.values():
        jv = dep["job_variables"]
        assert jv["gpus"] == 2 and jv["image"] == "registry.example.com/kdflow:1"
        assert jv["env"] == {"PYTHONUNBUFFERED": "1", "KDFLOW_HOME": "/data/kdflow"}  # file's env + command line's
    assert deps["retrain"]["work_queue_name"] == "retrain"
    assert (
        deps["retrain"]["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
        == "/opt/kdflow"
    )
    config = render("docker", pool["base_job_template"], deps["pipeline"]["job_variables"], api)
    assert config.image == "registry.example.com/kdflow:1"
    assert config.env["KDFLOW_GPUS"] == "2" and config.env["KDFLOW_HOME"] == "/data/kdflow"
    requests = docker_host_config(config)["DeviceRequests"]
    assert requests == [{"Driver": "nvidia", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    # the pool's default, for a deployment that names no count: one GPU
    one = render("docker", pool["base_job_template"], {"image": "x"}, api)
    assert docker_host_config(one)["DeviceRequests"][0]["Count"] == 1 and one.env["KDFLOW_GPUS"] == "1"


def test_kubernetes_pool_gets_nvidia_gpu_limits(deployed):
    outs, deployments, api = deployed
    out = outs["kubernetes"]
    assert out.returncode == 0, out.stdout + out.stderr
    pool = _get(api, "/work_pools/kdflow-k8s")
    assert pool["type"] == "kubernetes"
    deps = deployments["kubernetes"]
    assert set(deps) == {"pipeline", "sweep", "retrain"}
    jv = deps["sweep"]["job_variables"]
    assert jv["image"] == "registry.example.com/kdflow:1" and "gpus" not in jv  # the pool's default
    config = render("kubernetes", pool["base_job_template"], {**jv, "gpus": 3}, api)
    container = config.job_manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 3
    assert container["image"] == "registry.example.com/kdflow:1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KDFLOW_GPUS"] == "3" and env["PYTHONUNBUFFERED"] == "1"
    default = render("kubernetes", pool["base_job_template"], jv, api)
    limits = default.job_manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_process_pool_sets_visible_devices(real_servers):
    from flows.pool_templates import base_job_template

    api = real_servers["prefect"].extra["api"]
    template = base_job_template("process")
    assert template["variables"]["properties"]["gpus"]["default"] == 0
    config = render("process", template, {"gpus": 2, "visible_devices": "2,3", "env": {"A": "b"}}, api)
    assert config.env["CUDA_VISIBLE_DEVICES"] == "2,3" and config.env["KDFLOW_GPUS"] == "2"
    assert config.env["A"] == "b"
    plain = render("process", template, {}, api)
    assert plain.env["KDFLOW_GPUS"] == "0"
    import os

    assert plain.env.get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES"), "the worker's own"


def test_a_pool_created_between_deploys_read_and_create_gets_kdflows_template(real_servers):
    """`kdflow deploy` beside a worker starting for the same pool: the worker creates the pool (with
    Prefect's bare template) after deploy found none and before deploy creates it. Deploy then takes
    the pool that exists, as when it found it, and gives it kdflow's template (make test hit this race)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import ensure_pool

    api, pool = real_servers["prefect"].extra["api"], f"race-{uuid4().hex[:8]}"
    real_read = SyncPrefectClient.read_work_pool
    calls = []

    def read_then_lose_the_race(self, name):
        calls.append(name)
        if len(calls) == 1:  # the worker creates the pool right after deploy's first read
            httpx.post(f"{api}/work_pools/", json={"name": name, "type": "process"}, timeout=30).raise_for_status()
            raise ObjectNotFound(http_exc=Exception("not found"))
        return real_read(self, name)

    with pytest.raises(httpx.HTTPStatusError):
        _get(api, f"/work_pools/{pool}")
    with (
        temporary_settings({PREFECT_API_URL: api}),
        mock.patch.object(SyncPrefectClient, "read_work_pool", read_then_lose_the_race),
    ):
        created = ensure_pool(pool, "process")
    assert created is False and calls == [pool, pool]
    variables = _get(api, f"/work_pools/{pool}")["base_job_template"]["variables"]["properties"]
    assert "gpus" in variables


def test_prefect_yaml_deployments_carry_job_variables():
    specs = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
    for spec in specs:
        assert spec["work_pool"]["job_variables"], spec["name"]


def test_retargeted_file_keeps_everything_but_the_pool(tmp_path):
    from flows.deploy import PREFECT_FILE, targeted_file

    out = targeted_file(PREFECT_FILE, "kdflow-k8s", {"gpus": 2, "env": {"X": "1"}}, tmp_path / "p.yaml")
    before = yaml.safe_load(PREFECT_FILE.read_text())
    after = yaml.safe_load(out.read_text())
    assert after["pull"] == before["pull"]
    for old, new in zip(before["deployments"], after["deployments"]):
        assert new["work_pool"]["name"] == "kdflow-k8s"
        assert new["work_pool"]["work_queue_name"] == old["work_pool"]["work_queue_name"]
        assert new["work_pool"]["job_variables"] == {"env": {"PYTHONUNBUFFERED": "1", "X": "1"}, "gpus": 2}
        assert {k: v for k, v in new.items() if k != "work_pool"} == {k: v for k, v in old.items() if k != "work_pool"}


def test_bad_pool_type_job_variables_gpus_and_a_server_that_is_down_are_refused(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "ph"), KDFLOW_HOME=str(tmp_path / "home"), PREFECT_API_URL="http://127.0.0.1:9/api"
    )
    for args, message in (
        (["--pool-type", "slurm"], "--pool-type 'slurm' is not one of process, docker, kubernetes"),
        (["-j", "gpus"], "--job-variable 'gpus' is not KEY=VALUE"),
        ([], "the Prefect server at http://127.0.0.1:9/api (PREFECT_API_URL) does not answer"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "flows.cli", "deploy", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 2, out.stdout + out.stderr
        assert message in out.stderr and "Traceback" not in out.stderr


def test_deploy_checks_env_and_gpus_before_creating_anything():
    from flows.deploy import deploy, parse_job_variables
    from kdcore.errors import ConfigError

    with pytest.raises(ConfigError, match="--job-variable env='{bad json': env must be a JSON object of variables"):
        parse_job_variables(["env={bad json"])
    assert parse_job_variables(['env={"A": "1"}', "gpus=2"]) == {"env": {"A": "1"}, "gpus": 2}
    with pytest.raises(ConfigError, match=r"--gpus must be 1 or more \(the slots .*\), got -2"):
        deploy(None, -2)  # before any call to a Prefect server


def test_a_run_given_gpus_that_sees_none_fails_clearly(tmp_path):
    """KDFLOW_GPUS=1 (what a GPU pool's flow run gets) on this CPU-only machine: `kdflow run` stops
    before any work with one message, instead of training on the CPU."""
    import os

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(copy.deepcopy(TINY)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(tmp_path / "ph"), KDFLOW_HOME=str(tmp_path / "home"), KDFLOW_GPUS="1")
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "this run needs 1 GPU(s) (KDFLOW_GPUS=1" in out.stderr and "CUDA sees 0" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "home" / "artifacts").exists() and not list((tmp_path / "home").rglob("*.safetensors"))
    # an explicit device is the user's choice; an invalid count is named
    from kdcore.errors import ConfigError
    from kdcore.train.device import resolve_device

    with mock.patch.dict(os.environ, {"KDFLOW_GPUS": "1"}):
        assert resolve_device("cpu").type == "cpu"
        with pytest.raises(ConfigError, match="CUDA sees 0"):
            resolve_device("auto")
    with mock.patch.dict(os.environ, {"KDFLOW_GPUS": "two"}), pytest.raises(ConfigError, match="KDFLOW_GPUS='two'"):
        resolve_device("auto")
