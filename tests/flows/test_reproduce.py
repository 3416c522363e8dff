"""`kdflow reproduce`: a registered version's run, repeated in a fresh home, gives the same metrics
and weights; with changed data it says what differs and exits non-zero.

Each command runs as its own process, as a user runs them (the original run, later a reproduction),
all on one local Prefect server that the module stops at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from servers import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reproduce")
    home = tmp / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and k != "MLFLOW_TRACKING_URI"}
    env.update(
        KDFLOW_HOME=str(home),
        PYTHONPATH=str(ROOT),
        KDFLOW_PREFECT="local",
        KDFLOW_PREFECT_PORT=str(free_port()),
        KDFLOW_PREFECT_IDLE_MINUTES="0",
        COLUMNS="120",
    )
    cfg = tmp / "tiny.yaml"
    # the teacher and the baseline train at once in one process: one intra-op thread each, or torch may
    # split a reduction differently from one run to the next (the README says so; the speech and
    # text configs pin it too)
    cfg.write_text(yaml.safe_dump({**TINY, "trainer": {**TINY.get("trainer", {}), "num_threads": 1}}))

    def kdflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.cli", *args], env=env, cwd=tmp, capture_output=True, text=True, timeout=900
        )

    try:
        first = kdflow("run", str(cfg), "--quiet")
        assert first.returncode == 0, first.stderr[-3000:]
        yield kdflow, home, tmp
    finally:
        pidfile = home / "prefect-server" / "server.json"
        if pidfile.exists():
            try:
                os.killpg(json.loads(pidfile.read_text())["pid"], signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


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
    assert "NOT reproduced" in out.stdout
    rows = _rows(out.stdout)
    assert rows["data fingerprint"] == "NO" and rows["tiny-student sha256"] == "NO", out.stdout
    assert (tmp / "changed" / "mlflow.db").exists()  # kept for a look


def test_reproduce_of_an_unknown_version_says_so(registered):
    kdflow, _, _ = registered
    out = kdflow("reproduce", "models:/tiny-student/9")
    assert out.returncode == 2
    assert "models:/tiny-student/9: not found in the MLflow store" in out.stderr
    assert "Traceback" not in out.stderr
