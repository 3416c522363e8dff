"""The sweep flow: 4 trials (2 students x 2 temperatures) share one teacher and one cache entry,
run concurrently, and give one row per trial, a CSV and a Pareto PNG in MLflow."""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import TINY
from kdcore.config import SweepConfig, config_from_dict
from kdcore.errors import ConfigError

SWEEP = {
    "trials": [{"student.arch": "cnn_tiny"}, {"student.arch": "cnn", "student.kwargs": {"channels": [4, 8]}}],
    "grid": {"distill.temperature": [2.0, 4.0]},
    "max_workers": 4,
}


def sweep_raw() -> dict:
    raw = copy.deepcopy(TINY)
    raw["distill"] = {"train": {"max_epochs": 1, "batch_size": 64}}
    raw["baseline"] = {"enabled": False}  # keeps the test short; prepared like pretrain when enabled
    raw["evaluate"]["latency"] = False  # measured once per student after the trials (sweep.profile)
    raw["sweep"] = copy.deepcopy(SWEEP)
    return raw


@pytest.fixture(scope="module")
def swept(prefect_server, tmp_path_factory):
    from flows.params import run_locally
    from flows.sweep import sweep_flow

    home = tmp_path_factory.mktemp("sweep-home")
    result = run_locally(sweep_flow, home, config=sweep_raw(), home=str(home))
    return home, result


def test_one_row_per_trial_all_completed(swept):
    _, result = swept
    rows = result["table"]
    assert [r["trial"] for r in rows] == [0, 1, 2, 3]
    assert all(r["status"] == "completed" for r in rows), rows
    assert {(r["student"], r["temperature"]) for r in rows} == {
        ("cnn_tiny", 2.0),
        ("cnn_tiny", 4.0),
        ("cnn", 2.0),
        ("cnn", 4.0),
    }
    for r in rows:
        assert 0.0 < r["top1"] <= 1.0 and r["latency_ms"] > 0 and r["size_bytes"] > 0
    sizes = {r["student"]: r["size_bytes"] for r in rows}
    assert sizes["cnn"] < sizes["cnn_tiny"], "the two students are really different models"
    assert len({r["distill_fingerprint"] for r in rows}) == 4
    with open(result["results_csv"]) as fh:
        assert len(list(csv.DictReader(fh))) == 4
    assert any(r["pareto"] for r in rows)


def test_trials_share_the_teacher_and_the_cache_entry(swept):
    home, result = swept
    shared = result["shared"]
    assert shared["teacher"]["cached"] is False and shared["features"]["cached"] is False  # computed once, first
    rows = result["table"]
    for r in rows:  # ... and a cache hit for every trial (so for trials 2-4 in particular)
        assert r["teacher_cached"] and r["features_cached"], r
        assert r["pretrain_cached"], "each distinct pretrain stage was prepared once before the trials"
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    for stage, expected in (("teacher", 1), ("features", 1), ("pretrain", 2), ("distill", 4)):
        runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{stage}'")
        assert len(runs) == expected, (stage, len(runs))
    manifests = [json.loads(p.read_text()) for p in (home / "cache").rglob("manifest.json")]
    assert manifests and len({m["teacher_sha256"] for m in manifests}) == 1, "one teacher's outputs"
    assert sorted(m["split"] for m in manifests) == sorted({m["split"] for m in manifests}), "stored once per split"


def test_pareto_png_and_results_are_in_mlflow(swept, tmp_path):
    home, result = swept
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["kdflow.kind"] == "sweep"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"pareto.png", "results.csv", "trials.json"} <= names
    png = Path(client.download_artifacts(run.info.run_id, "pareto.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert sum(r.data.tags.get("kdflow.kind") == "pipeline" for r in children) == 4


def test_sweep_keys_that_would_change_the_teacher_are_refused(monkeypatch):
    from flows.sweep import expand_trials

    raw = sweep_raw()
    raw["sweep"]["grid"] = {"teacher.train.lr": [0.1, 0.2]}
    with pytest.raises(ConfigError, match="cannot vary"):
        expand_trials(config_from_dict(raw))
    raw["sweep"] = {"grid": {"distill.temprature": [1, 2]}}
    with pytest.raises(ConfigError, match="distill.temprature: unknown key"):
        expand_trials(config_from_dict(raw))
    raw.pop("sweep")  # a pipeline config without a sweep section: nothing to sweep, nothing trained
    with pytest.raises(ConfigError, match="no trials to sweep: give sweep.trials .* and/or sweep.grid"):
        expand_trials(config_from_dict(raw))
    raw["sweep"] = {"task_runner": "ray"}
    from flows.sweep import make_task_runner

    sweep = config_from_dict(raw).sweep
    if importlib.util.find_spec("prefect_ray") is not None:  # installed (kdflow[ray]): the runner is built
        from prefect_ray import RayTaskRunner

        assert isinstance(make_task_runner(sweep, 2), RayTaskRunner)
    for module, runner in (("prefect_ray", "ray"), ("prefect_dask", "dask")):  # absent: one clear message
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # `import` then raises ImportError
            with pytest.raises(
                ConfigError,
                match=rf"'{runner}' needs the {module.replace('_', '-')} package: "
                rf"pip install 'kdflow\[{runner}\]'",
            ):
                make_task_runner(SweepConfig(task_runner=runner), 2)
