"""Tracking through one door (tasks/tracking.py): runs as context managers, the registry's reads
and writes, nothing outside KDFLOW_HOME (no ./mlruns), experiments that MLflow 3's UI opens on the
runs table, and the first registered student serving as champion. One tiny pipeline run, started
from an empty working directory, serves the end-to-end checks."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from conftest import TINY, kdflow_home
from kdcore.config import PipelineConfig, config_from_dict
from tasks.tracking import EXPERIMENT_KIND, Tracker

ROOT = Path(__file__).resolve().parents[2]


def _tracker(home: Path) -> Tracker:
    home.mkdir(parents=True, exist_ok=True)
    return Tracker(f"sqlite:///{home / 'mlflow.db'}", home)


def _files_outside(cwd: Path) -> list[str]:
    return sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))


def test_a_run_ends_finished_or_failed_with_its_block(tmp_path):
    tracker = _tracker(tmp_path / "home")
    exp = tracker.experiment_id("door")
    with tracker.run(exp, "fine", tags={"k": "v"}) as ok:
        tracker.log_metrics(ok, {"m": 1.0})
    with pytest.raises(ValueError, match="boom"):
        with tracker.run(exp, "broken") as bad:
            raise ValueError("boom")
    assert tracker.client.get_run(ok).info.status == "FINISHED"
    assert tracker.client.get_run(ok).data.tags["k"] == "v"
    assert tracker.client.get_run(bad).info.status == "FAILED"


def test_experiments_are_marked_as_model_training(tmp_path):
    """MLflow 3's UI opens an experiment tagged ``mlflow.experimentKind = custom_model_development``
    on its runs table, others on the GenAI overview."""
    assert EXPERIMENT_KIND == {"mlflow.experimentKind": "custom_model_development"}
    tracker = _tracker(tmp_path / "home")
    new = tracker.client.get_experiment(tracker.experiment_id("fresh"))
    assert new.tags["mlflow.experimentKind"] == "custom_model_development"
    old = tracker.client.create_experiment("made-before")  # e.g. by an older kdflow
    assert tracker.experiment_id("made-before") == old
    assert tracker.client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    chosen = tracker.client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    tracker.experiment_id("chosen")
    assert tracker.client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_logging_and_registering_write_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """Old behaviour: MLflow's client created the SQLite store with the default artifact root
    ``./mlruns`` and every logged model went to experiment 0 there (``./mlruns/0/models/...``)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    home = tmp_path / "home"
    tracker = _tracker(home)
    with tracker.run(tracker.experiment_id("door"), "distill") as run_id:
        uri = tracker.log_torch_model(run_id, torch.nn.Linear(3, 2), torch.zeros(4, 3))
        tracker.log_text(run_id, "hello", "note.txt")
    version, created = tracker.register(uri, "door-model", {"kdflow.fingerprint": "f"})
    assert (version, created) == ("1", True)
    assert _files_outside(cwd) == []
    default = tracker.client.get_experiment("0")
    assert default.artifact_location.startswith((home / "mlartifacts").as_uri())
    logged = tracker.client.get_run(run_id).outputs.model_outputs
    assert len(logged) == 1
    model = tracker.client.get_logged_model(logged[0].model_id)
    assert model.experiment_id == tracker.client.get_run(run_id).info.experiment_id
    assert model.artifact_location.startswith((home / "mlartifacts").as_uri())


def test_registry_reads_and_writes(tmp_path):
    tracker = _tracker(tmp_path / "home")
    assert tracker.versions("nothing") == [] and tracker.version_by_alias("nothing", "champion") is None
    with tracker.run(tracker.experiment_id("door"), "distill") as run_id:
        tracker.log_metrics(run_id, {"final_val_top1": 0.75})
        uri = tracker.log_torch_model(run_id, torch.nn.Linear(3, 2), torch.zeros(4, 3))
    v1, _ = tracker.register(uri, "door-model", {"kdflow.fingerprint": "a"})
    v2, _ = tracker.register(uri, "door-model", {"kdflow.fingerprint": "b"})
    assert tracker.register(uri, "door-model", {"kdflow.fingerprint": "a"}) == (v1, False)
    assert sorted(v.version for v in tracker.versions("door-model")) == ["1", "2"]
    assert tracker.version_by_alias("door-model", "champion") is None
    tracker.set_alias("door-model", "champion", v2)
    assert tracker.version_by_alias("door-model", "champion").version == "2"
    tracker.set_version_tags("door-model", v1, {"k": "v", "url": "http://user:pw@host/x"})
    got = tracker.get_version("door-model", v1)
    assert got.tags["k"] == "v" and got.tags["url"] == "http://***@host/x" and got.run_id == run_id
    assert tracker.run_metrics(got.run_id)["final_val_top1"] == 0.75 and tracker.run_metrics(None) == {}
    tracker.delete_alias("door-model", "champion")
    tracker.delete_alias("door-model", "champion")  # already gone: nothing happens
    assert tracker.version_by_alias("door-model", "champion") is None
    tracker.set_model_tags("door-model", {"kdflow.last_retrain": "{}"})
    assert tracker.client.get_registered_model("door-model").tags["kdflow.last_retrain"] == "{}"


def test_only_the_tracker_touches_mlflow_clients_and_its_lock():
    """Tasks and flows go through Tracker methods, never its client or its lock; the flows open
    their runs with ``Tracker.run`` (no hand-written FAILED/FINISHED endings)."""
    reaching_in = re.compile(
        r"tracking import[^\n]*\b_LOCK\b|tracking\._LOCK|tracker\.client|MlflowClient\(|"
        r"wait_for_version"
    )
    offenders = [
        p.name
        for p in [*ROOT.glob("tasks/*.py"), *ROOT.glob("flows/*.py")]
        if p.name != "tracking.py" and reaching_in.search(p.read_text())
    ]
    assert offenders == []
    ending_by_hand = [
        p.name
        for p in [*ROOT.glob("tasks/*.py"), *ROOT.glob("flows/*.py")]
        if p.name != "tracking.py" and "end_run(" in p.read_text()
    ]
    assert ending_by_hand == []


@pytest.fixture(scope="module")
def pipeline_run(prefect_server, tmp_path_factory):
    """One tiny pipeline, run from an empty working directory."""
    import os

    from flows.runner import run_pipeline

    home = tmp_path_factory.mktemp("door-home")
    cwd = tmp_path_factory.mktemp("door-cwd")
    before = os.getcwd()
    os.chdir(cwd)
    try:
        with kdflow_home(home):
            cfg = config_from_dict(copy.deepcopy(TINY))
            report = run_pipeline(cfg)
    finally:
        os.chdir(before)
    return home, cwd, cfg, report


def test_a_pipeline_run_leaves_nothing_in_the_working_directory(pipeline_run):
    home, cwd, _, report = pipeline_run
    assert _files_outside(cwd) == [], "files written outside KDFLOW_HOME"
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment("0").artifact_location.startswith(home.as_uri())


def test_the_first_registered_student_is_the_champion(pipeline_run):
    home, _, _, report = pipeline_run
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    version = report["registered"]["tiny-student"]
    assert str(client.get_model_version_by_alias("tiny-student", "champion").version) == version == "1"


def test_the_run_holds_its_resolved_config_and_code_version(pipeline_run, tmp_path):
    from tasks.provenance import code_tags

    home, _, cfg, report = pipeline_run
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    parent = report["mlflow_parent_run_id"]
    local = client.download_artifacts(parent, "config.yaml", str(tmp_path))
    assert PipelineConfig.model_validate(yaml.safe_load(Path(local).read_text())) == cfg
    tags = client.get_run(parent).data.tags
    expected = code_tags()
    assert {k: tags.get(k) for k in expected} == expected
    for model in ("tiny-teacher", "tiny-student"):
        vtags = client.get_model_version(model, report["registered"][model]).tags
        assert {k: vtags.get(k) for k in expected} == expected, model
        assert vtags["kdflow.seed"] == "0"


def test_the_student_version_says_whether_distillation_paid(pipeline_run):
    home, _, _, report = pipeline_run
    verdict = report["verdict"]
    assert set(verdict) >= {"pays", "gain", "margin", "advice"}
    models = report["models"]
    assert verdict["gain"] == pytest.approx(models["student"]["top1"] - models["baseline"]["top1"])
    assert verdict["margin"] > 0 and verdict["withheld"] is None
    assert (verdict["advice"] == "") == verdict["pays"]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    tags = client.get_model_version("tiny-student", report["registered"]["tiny-student"]).tags
    assert tags["kdflow.beats_baseline"] == str(verdict["pays"])
    assert float(tags["kdflow.gain_margin"]) == pytest.approx(verdict["margin"], abs=1e-6)
