"""Shared fixtures. Prefect's temporary server starts once per test session."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# a `kdflow` started by a test (in process or as a subprocess) uses Prefect's temporary server, not the local
# server that outlives it; tests/test_local_server.py opts in with KDFLOW_PREFECT=local
os.environ.setdefault("KDFLOW_PREFECT", "ephemeral")

from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402

TINY = {
    "name": "tiny",
    "data": {"name": "digits"},
    "teacher": {"arch": "cnn_small", "train": {"max_epochs": 2, "batch_size": 64}},
    "student": {"arch": "cnn_tiny"},
    "distill": {"train": {"max_epochs": 2, "batch_size": 64}},
    "evaluate": {"min_run_time": 0.01, "throughput_batch": 32},
    "register": {"teacher_name": "tiny-teacher", "student_name": "tiny-student"},
}


# The slowest modules first: under `pytest -n 2 --dist loadfile` (the README's test command) a
# long module that started last would leave the other worker idle at the end.
SLOW_FIRST = (
    "test_progress",
    "test_workers",
    "test_determinism",
    "test_servers",
    "test_integration_servers",
    "test_pipeline_defects",
    "test_retrain",
    "test_reproduce",
    "test_pools",
    "test_sequence_pipeline",
    "test_reliability",
    "test_engines",
    "test_local_server",
    "test_own_models",
    "test_pipeline",
    "test_stage_spec",
    "test_methods_configs",
    "test_sweep",
    "test_streaming",
    "test_tracking_door",
    "test_views_consistency",
    "test_train_speed_paths",
    "test_schedule",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        module = Path(str(item.fspath)).stem
        return SLOW_FIRST.index(module) if module in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order inside a module is kept


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one torch thread each
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_process_state():
    """Each test leaves os.environ, MLflow's process-wide tracking URI and torch's thread count as it
    found them."""
    import mlflow
    import torch

    env = dict(os.environ)
    uri = mlflow.get_tracking_uri()
    threads = torch.get_num_threads()  # a stage sets it from trainer.num_threads
    yield
    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(uri)  # first: it also writes MLFLOW_TRACKING_URI into os.environ
    os.environ.clear()
    os.environ.update(env)


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def real_servers(tmp_path_factory):
    """A real Prefect server and a real MLflow tracking server on 127.0.0.1, for the whole session."""
    from servers import mlflow_server, prefect_server

    root = tmp_path_factory.mktemp("servers")
    prefect, mlflow = prefect_server(root / "prefect").launch(), mlflow_server(root / "mlflow").launch()
    try:
        prefect.wait()
        mlflow.wait()
        yield {"prefect": prefect, "mlflow": mlflow, "root": root}
    finally:
        mlflow.stop()
        prefect.stop()


@contextlib.contextmanager
def kdflow_home(home: Path) -> Iterator[Path]:
    """KDFLOW_HOME set to ``home`` and MLflow in its SQLite store (no MLFLOW_TRACKING_URI) inside,
    the environment put back after: for module-scoped fixtures, which monkeypatch cannot serve."""
    old = {k: os.environ.get(k) for k in ("KDFLOW_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["KDFLOW_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield home
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def kdhome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("KDFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def tiny_config(**sections):
    import copy

    from kdcore.config import config_from_dict

    raw = copy.deepcopy(TINY)
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return config_from_dict(raw)
