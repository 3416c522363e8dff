"""`kdflow reproduce`: a registered version's run, repeated in a fresh home, gives the same metrics
and weights; with changed data it says what differs and exits non-zero."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import TINY, kdflow_home
from flows.cli import app


@pytest.fixture(scope="module")
def registered(tmp_path_factory, prefect_server):
    tmp = tmp_path_factory.mktemp("reproduce")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    with kdflow_home(tmp / "home"):
        out = CliRunner().invoke(app, ["run", str(cfg), "--quiet"])
        assert out.exit_code == 0, out.output
        yield tmp


def _reproduce(tmp: Path, *args: str):
    with kdflow_home(tmp / "home"):
        return CliRunner().invoke(app, ["reproduce", *args])


def test_reproduce_matches_a_registered_version(registered, tmp_path):
    out = _reproduce(registered, "models:/tiny-student/1", "--home", str(tmp_path / "again"), "--quiet")
    assert out.exit_code == 0, out.output
    assert "reproduced: the same metrics and weights" in out.output
    rows = [line for line in out.output.splitlines() if line.strip().endswith(("yes", "NO"))]
    assert any(line.startswith("student top1") for line in rows) and any("tiny-student sha256" in line for line in rows)
    assert all(line.strip().endswith("yes") for line in rows), out.output
    assert (tmp_path / "again" / "mlflow.db").exists()  # the rerun used its own store...
    from mlflow import MlflowClient

    versions = MlflowClient(f"sqlite:///{registered / 'home' / 'mlflow.db'}").search_model_versions("name='tiny-student'")
    assert len(versions) == 1  # ...and registered nothing in the original's


def test_reproduce_fails_when_the_data_changed(registered, tmp_path):
    out = _reproduce(registered, "models:/tiny-student/1", "--set", "data.split_seed=1", "--home",
                     str(tmp_path / "changed"), "--quiet")
    assert out.exit_code == 1, out.output
    assert "NOT reproduced" in out.output
    lines = out.output.splitlines()
    assert next(line for line in lines if line.startswith("data fingerprint")).strip().endswith("NO")
    assert next(line for line in lines if line.startswith("tiny-student sha256")).strip().endswith("NO")


def test_reproduce_of_an_unknown_version_says_so(registered):
    out = _reproduce(registered, "models:/tiny-student/9")
    assert out.exit_code == 2
    assert "models:/tiny-student/9: not found in the MLflow store" in out.output
    assert "Traceback" not in out.output
