"""Flow runs on real Prefect machinery beyond one process (the session's real Prefect and MLflow
servers, tests/servers.py):

- two process workers on the kdflow-gpu pool (`kdflow deploy --gpus 1`, each worker one flow run at
  a time) and 2 pipeline deployment runs with different students, triggered together: both
  complete, each worker ran one of them, and the teacher was trained once (the `gpu` limit lets one
  training stage run at a time, and the run behind the first finds its teacher in the cache);
- `kdflow serve` of a deployment with a 10-second interval schedule: a scheduled run fires by
  itself and completes.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from conftest import TINY
from servers import PrefectApi

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 900

BASE = copy.deepcopy(TINY)
BASE.update(
    name="workers",
    register={"enabled": False},
    baseline={"enabled": False},
    evaluate={"latency": False, "throughput_batch": 32},
    trainer={"num_threads": 1},
)
BASE["distill"] = {"train": {"max_epochs": 1, "batch_size": 64}}
# two runs, a worker each (--limit 1): a third run, once here, cost the suite a flow-run process
# (~30 s of a core) and showed nothing two do not
STUDENTS = [
    {"arch": "cnn_tiny"},
    {"arch": "cnn", "kwargs": {"channels": [4, 8]}},
]


def student_config(student: dict) -> dict:
    cfg = copy.deepcopy(BASE)
    cfg["student"] = student
    return cfg


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_final(api: PrefectApi, run_ids: list[str], procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT
    runs: dict[str, dict] = {}
    while True:
        runs = {i: api.get(f"/flow_runs/{i}") for i in run_ids}
        if all(
            (r.get("state") or {}).get("type") in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs.values()
        ):
            return runs
        for name, p in procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{logs[name].read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"flow runs not done after {RUN_TIMEOUT}s: {[(r['name'], r['state']['type']) for r in runs.values()]}"
            )
        time.sleep(2)


@pytest.fixture(scope="module")
def env(real_servers, tmp_path_factory):
    from servers import client_env

    base = tmp_path_factory.mktemp("workers")
    e = client_env(real_servers["prefect"], real_servers["mlflow"].extra["uri"], base / "home")
    e.update(
        KDFLOW_REPO=str(ROOT),
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        PREFECT_RUNNER_POLL_FREQUENCY="2",
    )
    return e, base


def test_two_workers_split_two_pipeline_runs_and_train_the_teacher_once(env, real_servers):
    e, base = env
    api = PrefectApi(real_servers["prefect"].extra["api"])
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "deploy", "--gpus", "1", "--name", "pipeline"],
        cwd=ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    logs = {name: base / f"{name}.log" for name in ("w1", "w2")}
    procs = {
        name: start(
            [
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                "kdflow-gpu",
                "--name",
                name,
                "--limit",
                "1",
                "--install-policy",
                "never",
            ],
            e,
            logs[name],
        )
        for name in logs
    }
    try:
        dep = api.get("/deployments/name/kdflow-pipeline/pipeline")
        assert dep["work_pool_name"] == "kdflow-gpu"
        run_ids = [
            api.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": {"config": student_config(s)}})["id"]
            for s in STUDENTS
        ]
        runs = wait_final(api, run_ids, procs, logs)
    finally:
        for p in procs.values():
            stop(p)
    text = {name: log.read_text(errors="replace") for name, log in logs.items()}
    for run in runs.values():
        assert run["state"]["type"] == "COMPLETED", (
            f"{run['name']}: {run['state']}\n{text['w1'][-2000:]}\n{text['w2'][-2000:]}"
        )
    # both workers may try to take a run; the one the server refuses logs "Aborted submission"
    by_worker = {
        name: {
            i
            for i in run_ids
            if re.search(rf"submitting flow run '{i}'", t)
            and not re.search(rf"Aborted submission of flow run '{i}'", t)
        }
        for name, t in text.items()
    }
    assert by_worker["w1"] | by_worker["w2"] == set(run_ids) and not by_worker["w1"] & by_worker["w2"], by_worker
    assert by_worker["w1"] and by_worker["w2"], f"the work was split across both workers: {by_worker}"
    client = MlflowClient(real_servers["mlflow"].extra["uri"])
    exp = client.get_experiment_by_name("workers")
    teachers = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'teacher'")
    assert len(teachers) == 1, f"the teacher trained {len(teachers)} times"
    distills = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'distill'")
    assert len(distills) == len(STUDENTS) and all(r.info.status == "FINISHED" for r in distills)
    parents = client.search_runs([exp.experiment_id], filter_string="tags.`kdflow.kind` = 'pipeline'")
    assert {r.data.tags["kdflow.prefect_flow_run_id"] for r in parents} == set(run_ids)


def test_serve_fires_a_scheduled_run(env, real_servers, tmp_path):
    """`kdflow serve` with a deployments file whose one deployment runs every 10 seconds."""
    e, base = env
    api = PrefectApi(real_servers["prefect"].extra["api"])
    doc = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    spec = next(d for d in doc["deployments"] if d["name"] == "pipeline")
    spec.update(
        name="pipeline-every-10s",
        parameters={"config": student_config(STUDENTS[0])},
        schedules=[{"interval": 10, "active": True}],
    )
    doc["deployments"] = [spec]
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(doc))
    log = base / "serve.log"
    t0 = time.time()
    proc = start(
        ["-m", "flows.cli", "serve", "--prefect-file", str(prefect_file), "--limit", "1", "--gpus", "1"], e, log
    )
    done = None
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while done is None:
            if proc.poll() is not None:
                raise RuntimeError(f"kdflow serve exited:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no scheduled run completed in {RUN_TIMEOUT}s:\n{log.read_text()[-3000:]}")
            try:
                dep = api.get("/deployments/name/kdflow-pipeline/pipeline-every-10s")
            except httpx.HTTPStatusError:
                time.sleep(2)
                continue
            runs = api.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}})
            failed = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED")]
            assert not failed, f"{failed[0]['state']}\n{log.read_text()[-3000:]}"
            done = next((r for r in runs if r["state_type"] == "COMPLETED"), None)
            time.sleep(2)
    finally:
        stop(proc)
        try:  # no more runs of it once the test is over
            api.post(f"/deployments/{dep['id']}/pause_deployment", {})
        except Exception:  # noqa: BLE001
            pass
    assert done["auto_scheduled"] is True, "the run came from the schedule, not from a trigger"
    assert dep["schedules"][0]["schedule"]["interval"] == 10.0
    assert dep["work_pool_name"] is None, "served: no pool, no worker"
    client = MlflowClient(real_servers["mlflow"].extra["uri"])
    exp = client.get_experiment_by_name("workers")
    parents = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`kdflow.prefect_flow_run_id` = '{done['id']}'"
    )
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.start_time / 1000 > t0
