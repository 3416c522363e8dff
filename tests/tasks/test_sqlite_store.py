"""New homes' SQLite MLflow stores are copies of one migrated empty store (tasks/sqlite_store.py):
MLflow accepts them, their "Default" experiment points into their own home, MLflow's migrations run
once per MLflow version, and without a usable cache MLflow builds the store as before."""

from __future__ import annotations

from pathlib import Path

import mlflow.store.db.utils as db_utils
import pytest
from mlflow import MlflowClient

from tasks import sqlite_store
from tasks.tracking import Tracker


def _tracker(home: Path) -> Tracker:
    home.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return Tracker(uri, home)


def test_new_stores_are_copies_of_one_migration_and_work(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = _tracker(tmp_path / "a")
    template = sqlite_store.template_path()
    assert template.parent == tmp_path / "cache" / "kdflow" and template.is_file()

    def no_migrations(engine):
        raise AssertionError("MLflow migrated a new store although the template exists")

    monkeypatch.setattr(db_utils, "_initialize_tables", no_migrations)
    second = _tracker(tmp_path / "b")
    for tracker, home in ((first, tmp_path / "a"), (second, tmp_path / "b")):
        client = MlflowClient(tracker.uri)
        assert client.get_experiment("0").artifact_location == (home / "mlartifacts" / "0").as_uri()
        exp = tracker.experiment_id("x")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "top1", 0.5)
        client.create_registered_model("m")
        assert client.get_run(run.info.run_id).data.metrics == {"top1": 0.5}
    assert not list(template.parent.glob(".building-*")) and not list((tmp_path / "b").glob(".new-store-*"))


def test_an_existing_store_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    home = tmp_path / "home"
    tracker = _tracker(home)
    MlflowClient(tracker.uri).create_experiment("kept")
    assert sqlite_store.seed_new_store(home / "mlflow.db") is False
    assert MlflowClient(tracker.uri).get_experiment_by_name("kept") is not None


def test_without_a_usable_cache_mlflow_builds_the_store_itself(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    home = tmp_path / "home"
    tracker = _tracker(home)
    assert not sqlite_store.template_path().exists()
    client = MlflowClient(tracker.uri)
    assert client.get_experiment("0").artifact_location == (home / "mlartifacts" / "0").as_uri()
    assert client.get_experiment(tracker.experiment_id("y")).name == "y"


@pytest.mark.parametrize("broken", ["empty", "garbage"])
def test_a_damaged_template_is_not_copied_into_a_home(tmp_path, monkeypatch, broken):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = sqlite_store.template_path()
    template.parent.mkdir(parents=True)
    template.write_bytes(b"" if broken == "empty" else b"not a database")
    tracker = _tracker(tmp_path / "home")
    assert MlflowClient(tracker.uri).get_experiment_by_name("Default") is not None
