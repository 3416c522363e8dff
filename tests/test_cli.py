"""The command line: help is complete, bad configs fail with one message and leave nothing behind."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def kdflow(*args: str, home: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDFLOW_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def test_help_lists_every_command(tmp_path):
    out = kdflow("--help", home=tmp_path)
    assert out.returncode == 0
    for cmd in ("run", "validate", "ui"):
        assert cmd in out.stdout
    run_help = kdflow("run", "--help", home=tmp_path)
    for opt in ("--set", "--report", "KEY=VALUE", "config"):
        assert opt in run_help.stdout


@pytest.mark.parametrize("overrides, needle", [
    (["distill.temprature=4"], "distill.temprature: unknown key"),
    (["distill.temperature=-2"], "distill.temperature = -2"),
    (["teacher.arch=resnet_huge"], "teacher.arch: unknown model 'resnet_huge'"),
])
def test_bad_config_fails_before_any_stage(tmp_path, overrides, needle):
    args = ["run"]
    for o in overrides:
        args += ["--set", o]
    out = kdflow(*args, home=tmp_path / "home")
    assert out.returncode == 2
    assert needle in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp_path / "home" / "mlflow.db").exists(), "no MLflow store (hence no run) may be written"
    assert not (tmp_path / "home" / "runs").exists()


def test_validate_accepts_the_default_config(tmp_path):
    out = kdflow("validate", home=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "config OK" in out.stdout
