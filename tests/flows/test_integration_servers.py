"""kdflow on real servers: a Prefect server and an MLflow tracking server (SQLite, local artifact
root) on 127.0.0.1 as subprocesses, the work pool and deployments from deployments/prefect.yaml
(`kdflow deploy`), a process worker, and flow runs triggered through the REST API:

1. the pipeline deployment with a deliberately weak student (its version becomes the champion);
2. the retrain deployment with a well-trained student: significantly better -> alias `champion` moves;
3. the retrain deployment with another weak student: worse -> alias `challenger`, champion stays.

At the end every server process is gone and every port is free. This test never touches the
session's temporary Prefect server: everything it does talks to its own servers, from
subprocesses or over HTTP.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from conftest import TINY
from migrated_prefect_db import seed as seed_prefect_db
from servers import PrefectApi

pytestmark = pytest.mark.slow  # real Prefect/MLflow servers: `pytest -m 'not slow'` skips them

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 240
RUN_TIMEOUT = 480

BASE = copy.deepcopy(TINY)
BASE.update(
    name="it",
    register={"teacher_name": "it-teacher", "student_name": "it-student"},
    baseline={"enabled": False},
    evaluate={"latency": False, "throughput_batch": 32},
    trainer={"num_threads": 1},
)  # one thread: far faster than two on a shared 2-core machine
WEAK = copy.deepcopy(BASE)  # the student barely moves from its random initialisation
WEAK["distill"] = {"train": {"max_epochs": 1, "batch_size": 64, "lr": 1e-6, "momentum": 0.0, "scheduler": "none"}}
GOOD = copy.deepcopy(BASE)
GOOD["distill"] = {"train": {"max_epochs": 3, "batch_size": 64, "lr": 0.05}}
WEAK2 = copy.deepcopy(WEAK)
WEAK2["distill"]["temperature"] = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens there, and a new server could bind it (as servers do, with SO_REUSEADDR;
    closed connections may linger in TIME_WAIT)."""
    with socket.socket() as s:
        s.settimeout(2)
        if s.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
            return True
        except OSError:
            return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class Stack:
    """The servers and the worker, each in its own process group, with their logs."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.prefect_port, self.mlflow_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.mlflow = f"http://127.0.0.1:{self.mlflow_port}"
        self.home = base / "home"
        self.procs: dict[str, subprocess.Popen] = {}
        seed_prefect_db(base / "prefect.db")  # a migrated database (tests/migrated_prefect_db.py)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "KDFLOW_"))}
        env.update(
            {
                "PREFECT_HOME": str(base / "prefect-home"),
                "PREFECT_API_URL": self.api,
                "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{base / 'prefect.db'}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "false",
                "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # no nightly retrain during the test
                # services this test does not need (runs, task runs, events and concurrency leases stay on)
                **{
                    f"PREFECT_SERVER_SERVICES_{svc}_ENABLED": "false"
                    for svc in (
                        "LATE_RUNS",
                        "FOREMAN",
                        "TRIGGERS",
                        "CANCELLATION_CLEANUP",
                        "PAUSE_EXPIRATIONS",
                        "DB_VACUUM",
                        "EVENT_LOGGER",
                    )
                },
                "PREFECT_LOGGING_LEVEL": "INFO",
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "5",
                "MLFLOW_TRACKING_URI": self.mlflow,
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                "KDFLOW_HOME": str(self.home),
                "KDFLOW_REPO": str(ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.env = env

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.base / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self, name: str, lines: int = 40) -> str:
        path = self.base / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def wait_healthy(self, *names: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        urls = {"prefect": f"{self.api}/health", "mlflow": f"{self.mlflow}/health"}
        pending = {n: urls[n] for n in names}
        while pending:
            for name, url in list(pending.items()):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} server exited:\n{self.log(name)}")
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"servers not up after {STARTUP_TIMEOUT}s: {list(pending)}")
            time.sleep(0.5)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> dict[str, int]:
        """SIGTERM to each process group (worker first), SIGKILL after a grace period; returns the pgids."""
        groups = {}
        for name in ("worker", "prefect", "mlflow"):
            proc = self.procs.get(name)
            if proc is None:
                continue
            groups[name] = proc.pid
            if group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, pgid in groups.items():
            try:
                self.procs[name].wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            while group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
                time.sleep(0.5)
        return groups

    # -- the Prefect REST API, over plain HTTP (no Prefect client settings involved) --------------
    def get(self, path: str) -> Any:
        return PrefectApi(self.api).get(path)

    def post(self, path: str, body: dict) -> Any:
        return PrefectApi(self.api).post(path, body)

    def run_deployment(self, flow: str, deployment: str, parameters: dict) -> dict:
        dep = self.get(f"/deployments/name/{flow}/{deployment}")
        run = self.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            run = self.get(f"/flow_runs/{run['id']}")
            state = (run.get("state") or {}).get("type")
            if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            if self.procs["worker"].poll() is not None:
                raise RuntimeError(f"the worker exited:\n{self.log('worker')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"flow run {run['name']} still {state} after {RUN_TIMEOUT}s:\n{self.log('worker')}")
            time.sleep(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("servers"))
    s.start("prefect", ["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(s.prefect_port)])
    s.start(
        "mlflow",
        [
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.mlflow_port),
            "--backend-store-uri",
            f"sqlite:///{s.base / 'mlflow.db'}",
            "--artifacts-destination",
            str(s.base / "mlartifacts"),
            "--workers",
            "1",
        ],
    )
    try:
        s.wait_healthy("prefect")  # the worker and `kdflow deploy` need only Prefect: start them now
        s.start(
            "worker",
            [
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                "kdflow-gpu",
                "--type",
                "process",
                "--name",
                "it-worker",
                "--install-policy",
                "never",
            ],
        )
        deploy = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "deploy", "--gpus", "1"],
            cwd=ROOT,
            env=s.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        s.wait_healthy("mlflow")
        out, err = deploy.communicate(timeout=300)
        s.deployed = subprocess.CompletedProcess(deploy.args, deploy.returncode, out, err)
        yield s
    finally:
        s.stop()


def _fail_info(stack: Stack, run: dict) -> str:
    return f"flow run {run['name']}: {run['state']}\n--- worker log ---\n{stack.log('worker', 80)}"


def client(stack: Stack) -> MlflowClient:
    return MlflowClient(tracking_uri=stack.mlflow)


def _decision(stack: Stack, run: dict) -> str:
    """What the retrain run decided and why (for assertion messages)."""
    c = client(stack)
    exp = c.get_experiment_by_name("it")
    found = c.search_runs([exp.experiment_id], filter_string=f"tags.`kdflow.prefect_flow_run_id` = '{run['id']}'")
    tags = {k: v for r in found for k, v in r.data.tags.items() if k.startswith("kdflow.")}
    return f"retrain run tags: {tags}\n--- worker log ---\n{stack.log('worker', 60)}"


def test_deploy_creates_pool_limit_and_deployments(stack):
    out = stack.deployed
    assert out.returncode == 0, out.stdout + out.stderr
    assert "task concurrency limit on tag 'gpu': 1" in out.stdout
    pool = stack.get("/work_pools/kdflow-gpu")
    assert pool["type"] == "process"
    assert stack.get("/concurrency_limits/tag/gpu")["concurrency_limit"] == 1
    deps = {d["name"]: d for d in stack.post("/deployments/filter", {})}
    assert {"pipeline", "sweep", "retrain"} <= set(deps)
    retrain = deps["retrain"]
    assert retrain["work_pool_name"] == "kdflow-gpu" and retrain["work_queue_name"] == "retrain"
    assert [s["schedule"]["cron"] for s in retrain["schedules"]] == ["0 3 * * *"]
    assert deps["sweep"]["parameters"]["config"] == "configs/sweep.yaml"
    steps = retrain["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    assert steps["directory"] == str(ROOT)


def test_pipeline_deployment_runs_on_the_worker(stack):
    run = stack.run_deployment("kdflow-pipeline", "pipeline", {"config": WEAK})
    assert run["state"]["type"] == "COMPLETED", _fail_info(stack, run)
    assert run["work_pool_name"] == "kdflow-gpu"
    c = client(stack)
    exp = c.get_experiment_by_name("it")
    parents = c.search_runs([exp.experiment_id], filter_string=f"tags.`kdflow.prefect_flow_run_id` = '{run['id']}'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    stages = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert {r.info.run_name for r in stages} >= {"teacher", "features", "distill", "evaluate", "register"}
    student = c.get_model_version("it-student", "1")
    assert c.get_model_version("it-teacher", "1").status == "READY"
    # the registered student is exported too, and its TorchScript file matches the PyTorch model
    assert student.tags["kdflow.export_uri"].endswith("export/student.torchscript.pt")
    distill = c.get_run(student.run_id)
    assert distill.data.metrics["export_max_abs_diff"] <= 1e-4
    assert float(student.tags["test_top1"]) < 0.3, "the weak student is weak"
    # the test makes this deliberately weak model the champion
    c.set_registered_model_alias("it-student", "champion", "1")


def test_retrain_promotes_a_significantly_better_challenger(stack):
    run = stack.run_deployment("kdflow-retrain", "retrain", {"config": GOOD, "force": True})
    assert run["state"]["type"] == "COMPLETED", _fail_info(stack, run)
    c = client(stack)
    assert str(c.get_model_version_by_alias("it-student", "champion").version) == "2", _decision(stack, run)
    v2 = c.get_model_version("it-student", "2")
    assert v2.tags["kdflow.retrain.decision"] == "promote"
    assert v2.tags["kdflow.retrain.compared_with"] == "1"
    assert float(v2.tags["kdflow.retrain.delta_top1"]) > 0.3 and float(v2.tags["kdflow.retrain.p_value"]) < 0.05
    assert v2.tags["kdflow.retrain.prefect_flow_run_id"] == run["id"]
    exp = c.get_experiment_by_name("it")
    retrain = c.search_runs([exp.experiment_id], filter_string=f"tags.`kdflow.prefect_flow_run_id` = '{run['id']}'")
    assert len(retrain) == 1 and retrain[0].data.tags["kdflow.decision"] == "promote"
    assert retrain[0].data.metrics["promoted"] == 1.0
    assert [a.path for a in c.list_artifacts(retrain[0].info.run_id)] == ["comparison.json"]
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{retrain[0].info.run_id}'")
    assert [r.data.tags["kdflow.kind"] for r in children] == ["pipeline"], "the pipeline ran as the retrain's child"
    # the teacher was reused, not registered again
    assert len(c.search_model_versions("name='it-teacher'")) == 1
    artifacts = stack.post("/artifacts/filter", {"artifacts": {"key": {"any_": ["kdflow-retrain-decision"]}}})
    assert any("promote" in (a.get("data") or "") for a in artifacts)


def test_retrain_keeps_the_champion_when_the_challenger_is_worse(stack):
    run = stack.run_deployment("kdflow-retrain", "retrain", {"config": WEAK2, "force": True})
    assert run["state"]["type"] == "COMPLETED", _fail_info(stack, run)
    c = client(stack)
    assert str(c.get_model_version_by_alias("it-student", "champion").version) == "2", _decision(stack, run)
    assert str(c.get_model_version_by_alias("it-student", "challenger").version) == "3", _decision(stack, run)
    v3 = c.get_model_version("it-student", "3")
    assert v3.tags["kdflow.retrain.decision"] == "keep" and "not better" in v3.tags["kdflow.retrain.reason"]
    assert "kdflow.promoted_at" not in v3.tags


def test_everything_stops_cleanly(stack):
    ports = (stack.prefect_port, stack.mlflow_port)
    groups = stack.stop()
    assert set(groups) == {"worker", "prefect", "mlflow"}
    for name, pgid in groups.items():
        assert stack.procs[name].poll() is not None, f"{name} still running"
        assert not group_alive(pgid), f"a process of the {name} group is still alive"
    deadline = time.monotonic() + 10
    while not all(port_is_free(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(port_is_free(p) for p in ports), ports


def test_serve_builds_the_deployments_of_prefect_yaml():
    """`kdflow serve` serves the same deployments as `kdflow deploy` applies (no server needed to build them)."""
    import yaml

    from flows.deploy import PREFECT_FILE, runner_deployments

    specs = {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}
    built = {d.name: d for d in runner_deployments()}
    assert set(built) == set(specs) == {"pipeline", "sweep", "retrain"}
    for name, dep in built.items():
        assert dep.parameters == specs[name]["parameters"] and dep.tags == specs[name]["tags"]
    assert [s.schedule.cron for s in built["retrain"].schedules] == ["0 3 * * *"]
    assert built["retrain"].concurrency_limit == 1
    assert built["sweep"].flow_name == "kdflow-sweep" and built["retrain"].flow_name == "kdflow-retrain"


def test_deploy_without_a_server_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), KDFLOW_HOME=str(tmp_path / "home"))
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "deploy"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2
    assert "no Prefect server configured" in out.stderr and "Traceback" not in out.stderr
