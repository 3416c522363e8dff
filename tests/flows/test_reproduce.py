"""`kdflow reproduce`: a registered version's run, repeated in a fresh home, gives the same metrics
and weights; with changed data it says so before training anything and exits non-zero.

Each command runs as its own process, as a user runs them (the original run, later a reproduction),
all against the test session's Prefect server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registered(prefect_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    home = tmp / "home"
    # the session's Prefect server (PREFECT_API_URL, tests/conftest.py): what is under test is the MLflow
    # side (the registered version, the fresh home's own store); the local server kdflow keeps up is
    # tests/flows/test_local_server.py's, and starting one here would cost the suite ~15 s of a core
    assert os.environ.get("PREFECT_API_URL"), "the prefect_server fixture sets it"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(KDFLOW_HOME=str(home), PYTHONPATH=str(ROOT), COLUMNS="120")
    cfg = tmp / "tiny.yaml"
    # the teacher and the baseline train at once in one process: one intra-op thread each, or torch may
    # split a reduction differently from one run to the next (the README says so; the speech and
    # text configs pin it too)
    cfg.write_text(yaml.safe_dump({**TINY, "trainer": {**TINY.get("trainer", {}), "num_threads": 1}}))

    def kdflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args], env=env, cwd=tmp, capture_output=True, text=True, timeout=900
        )

    first = kdflow("run", str(cfg), "--quiet")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (home / "prefect-server").exists(), "the run used the session's server"
    return kdflow, home, tmp


def _rows(stdout: str) -> dict[str, str]:
    """The comparison table: {what: 'yes' | 'NO'}."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[-1] in ("yes", "NO") and len(parts) >= 4:
            rows[" ".join(parts[:-3])] = parts[-1]
    return rows


def test_reproduce_matches_a_registered_version(registered):
    kdflow, home, tmp = registered
    out = kdflow("reproduce", "models:/tiny-student/1", "--home", str(tmp / "again"), "--quiet")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "reproduced: the same metrics and weights" in out.stdout
    rows = _rows(out.stdout)
    for what in (
        "teacher top1",
        "baseline top1",
        "student top1",
        "student ece",
        "data fingerprint",
        "tiny-student sha256",
    ):
        assert rows.get(what) == "yes", (what, out.stdout)
    assert set(rows.values()) == {"yes"}
    assert (tmp / "again" / "mlflow.db").exists()  # the rerun used its own store...
    from mlflow import MlflowClient

    versions = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_model_versions("name='tiny-student'")
    assert len(versions) == 1  # ...and registered nothing in the original's


def test_reproduce_fails_when_the_data_changed(registered):
    kdflow, _, tmp = registered
    out = kdflow(
        "reproduce", "models:/tiny-student/1", "--set", "data.split_seed=1", "--home", str(tmp / "changed"), "--quiet"
    )
    assert out.returncode == 1, out.stdout + out.stderr[-3000:]
    assert "NOT reproduced" in out.stdout and "nothing was trained" in " ".join(out.stdout.split())
    assert _rows(out.stdout) == {"data fingerprint": "NO"}, out.stdout
    assert not (tmp / "changed").exists()  # other data: said at once, no home made, no run opened


def test_reproduce_of_an_unknown_version_says_so(registered):
    kdflow, _, _ = registered
    out = kdflow("reproduce", "models:/tiny-student/9")
    assert out.returncode == 2
    assert "models:/tiny-student/9: not found in the MLflow store" in out.stderr
    assert "Traceback" not in out.stderr


def test_reproduce_checks_its_overrides_and_the_tracking_server_first(registered, monkeypatch):
    """Both fail before the original run is looked up (which would wait minutes on a server that is down
    and then call the version "not found")."""
    from flows.reproduce import reproduce_ref
    from kdcore.errors import ConfigError, KdflowError

    _, home, _ = registered
    monkeypatch.setenv("KDFLOW_HOME", str(home))
    with pytest.raises(ConfigError, match="nosuch"):
        reproduce_ref("models:/tiny-student/1", ["nosuch.key=1"])
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed}")
    with pytest.raises(KdflowError, match=f"MLflow tracking server http://127.0.0.1:{closed} is unreachable"):
        reproduce_ref("models:/tiny-student/1")
