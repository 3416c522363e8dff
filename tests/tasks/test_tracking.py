"""The MLflow adapter leaves the process as it found it: two pipelines in one process with
different homes log into their own stores (a Prefect worker runs many flows in one process)."""

from __future__ import annotations

import os

import mlflow
import torch

from tasks.tracking import Tracker


def test_logging_a_model_leaves_the_process_tracking_uri_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    stores = {}
    for name in ("a", "b"):
        home = tmp_path / name
        home.mkdir()
        tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home)
        run = tracker.start_run(tracker.experiment_id("exp"), f"run-{name}")
        uri = tracker.log_torch_model(run, torch.nn.Linear(3, 2), torch.zeros(4, 3))
        version, created = tracker.register(uri, f"model-{name}", {"kdflow.fingerprint": name})
        tracker.end_run(run)
        assert (version, created) == ("1", True)
        assert "MLFLOW_TRACKING_URI" not in os.environ, "the adapter exported its URI to the environment"
        assert mlflow.get_tracking_uri() == before
        stores[name] = tracker
    for name, tracker in stores.items():
        names = sorted(m.name for m in tracker.client.search_registered_models())
        assert names == [f"model-{name}"], f"store {name} holds {names}"


def test_an_alias_set_by_a_concurrent_promotion_is_set_again(tmp_path, monkeypatch):
    """MLflow's SQL store reads, then inserts an alias row: a pipeline promoting the same model at
    the same moment makes the insert fail on the unique key (seen with four pipelines on one server).
    The tracker tries again, and the alias points at its version; other errors still fail."""
    import pytest
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    run = tracker.start_run(tracker.experiment_id("exp"), "run")
    uri = tracker.log_torch_model(run, torch.nn.Linear(3, 2), torch.zeros(4, 3))
    version, _ = tracker.register(uri, "m", {"kdflow.fingerprint": "x"})
    tracker.end_run(run)
    real = tracker.client.set_registered_model_alias
    calls = []

    def racing(name, alias, v):
        calls.append(v)
        if len(calls) == 1:  # the other pipeline's row went in between our read and our insert
            real(name, alias, v)
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.name", "BAD_REQUEST"
            )
        return real(name, alias, v)

    monkeypatch.setattr(tracker.client, "set_registered_model_alias", racing)
    tracker.set_alias("m", "champion", version)
    assert len(calls) == 2 and tracker.version_by_alias("m", "champion").version == version

    def broken(name, alias, v):
        raise MlflowException("registered model m not found", "RESOURCE_DOES_NOT_EXIST")

    monkeypatch.setattr(tracker.client, "set_registered_model_alias", broken)
    with pytest.raises(MlflowException, match="not found"):
        tracker.set_alias("m", "champion", version)


def test_a_tracking_server_that_goes_away_fails_in_seconds_unless_the_user_asks_for_more():
    """kdflow's processes retry an unreachable MLflow server 4 times (backoff 2 s) instead of MLflow's
    minutes per call, and print no download bar; a value the user set is kept (set with setdefault)."""
    from mlflow.environment_variables import (
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR,
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    )

    from tasks.tracking import MLFLOW_DEFAULTS

    for name, value in MLFLOW_DEFAULTS.items():
        assert os.environ[name] == value, name  # nothing in the test environment sets them
    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 4 and MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get() == 2
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False
