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
