"""Sweeps on real engines: the same 2-trial sweep (2 students, one temperature) on a local Dask
cluster of one worker process and on a local Ray cluster of one CPU gives the same results as run
one trial at a time; on each engine the trials ran in the engine's worker processes, shared one
teacher and one cache entry (computed once, a cache hit for every trial), and are all in MLflow.

Wall times of the three are printed by bench/engines.py (never asserted)."""

from __future__ import annotations

import copy
import os

import pytest
from mlflow import MlflowClient
from test_sweep import sweep_raw

pytest.importorskip("prefect_dask")
pytest.importorskip("prefect_ray")


def engine_raw(runner: str, workers: int) -> dict:
    raw = sweep_raw()
    raw["trainer"] = {"num_threads": 1}  # one thread per trial: the engines' processes share 2 cores
    raw["sweep"] = {**copy.deepcopy(raw["sweep"]), "task_runner": runner, "max_workers": workers, "profile": False}
    # two students, one temperature (each trial costs seconds of engine start-up, so more trials
    # would add time and no new case)
    raw["sweep"]["grid"] = {"distill.temperature": [4.0]}
    return raw


@pytest.fixture(scope="module")
def sweeps(prefect_server, tmp_path_factory):
    from flows.params import run_locally
    from flows.sweep import sweep_flow

    out = {}
    # one worker process per engine: a second one costs the suite its start-up (~15 s of a core each
    # here: it imports torch, MLflow and Prefect) and shows nothing the trials' pids do not
    for runner, workers in (("thread", 1), ("dask", 1), ("ray", 1)):
        home = tmp_path_factory.mktemp(f"engine-{runner}")
        out[runner] = home, run_locally(sweep_flow, home, config=engine_raw(runner, workers), home=str(home))
    return out


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_sweep_on_engine_matches_the_sequential_sweep(sweeps, engine):
    _, sequential = sweeps["thread"]
    home, result = sweeps[engine]
    rows, reference = result["table"], sequential["table"]
    assert [r["status"] for r in rows] == ["completed"] * 2, rows
    for r, ref in zip(rows, reference):
        assert (r["student"], r["temperature"]) == (ref["student"], ref["temperature"])
        assert r["distill_fingerprint"] == ref["distill_fingerprint"]
        assert r["top1"] == pytest.approx(ref["top1"], abs=1e-9), (engine, r["trial"])
        assert r["size_bytes"] == ref["size_bytes"]
    assert len({r["top1"] for r in rows}) > 1, "the trials are really different"
    # the trials ran in the engine's worker processes, not in this one
    pids = {r["pid"] for r in rows}
    assert os.getpid() not in pids and None not in pids, pids
    assert {r["pid"] for r in reference} == {os.getpid()}, "the sequential sweep ran here"


@pytest.mark.parametrize("engine", ["dask", "ray"])
def test_engine_trials_share_teacher_and_cache_entry(sweeps, engine):
    home, result = sweeps[engine]
    shared = result["shared"]
    assert shared["teacher"]["cached"] is False and shared["features"]["cached"] is False
    for r in result["table"]:
        assert r["teacher_cached"] and r["features_cached"] and r["pretrain_cached"], r
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    for stage, expected in (("teacher", 1), ("features", 1), ("pretrain", 2), ("distill", 2)):
        runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{stage}'")
        assert len(runs) == expected, (engine, stage, len(runs))
        assert all(run.info.status == "FINISHED" for run in runs)
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result['mlflow_run_id']}'"
    )
    pipelines = [r for r in children if r.data.tags.get("kdflow.kind") == "pipeline"]
    assert len(pipelines) == 2 and all(r.info.status == "FINISHED" for r in pipelines)


def test_runner_choice_reaches_the_engine():
    """The runner built for each choice: a local cluster by default, the address when given, and a
    GPU resource per trial when the trials train on CUDA."""
    from prefect_dask import DaskTaskRunner
    from prefect_ray import RayTaskRunner

    from flows.task_runners import gpus_per_trial, make_task_runner
    from kdcore.config import SweepConfig, TrainerConfig

    dask_local = make_task_runner(SweepConfig(task_runner="dask", max_workers=3), 4)
    assert isinstance(dask_local, DaskTaskRunner)
    assert dask_local.cluster_kwargs["n_workers"] == 3 and dask_local.cluster_kwargs["processes"] is True
    dask_remote = make_task_runner(SweepConfig(task_runner="dask", address="tcp://10.0.0.5:8786"), 4)
    assert dask_remote.address == "tcp://10.0.0.5:8786"
    with_gpus = make_task_runner(SweepConfig(task_runner="dask"), 4, gpus=1)
    assert "GPU" in with_gpus.cluster_kwargs["resources"]
    ray_local = make_task_runner(SweepConfig(task_runner="ray", max_workers=2), 4)
    assert isinstance(ray_local, RayTaskRunner) and ray_local.init_kwargs["num_cpus"] == 2
    assert make_task_runner(SweepConfig(task_runner="ray", address="ray://head:10001"), 4).address == "ray://head:10001"
    assert gpus_per_trial(SweepConfig(task_runner="ray"), TrainerConfig(device="cuda")) == 1.0
    assert gpus_per_trial(SweepConfig(task_runner="ray", gpus_per_trial=0.5), TrainerConfig(device="cuda")) == 0.5
    assert gpus_per_trial(SweepConfig(task_runner="ray"), TrainerConfig(device="cpu")) == 0.0
