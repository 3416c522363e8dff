"""Defects of issue 15 in the pipeline: a garbage-collected or damaged cache entry is rebuilt
(1), ``trainer.retries`` is honoured (3), and an error of kdflow's own raised inside a stage reaches
the user as one line (9)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import TINY, kdflow_home
from kdcore.config import config_from_dict

ROOT = Path(__file__).resolve().parents[2]
NO_BASELINE = {**copy.deepcopy(TINY), "baseline": {"enabled": False}}


def _entries(home: Path) -> dict[str, Path]:
    """split -> entry directory of the teacher cache."""
    out = {}
    for manifest in (home / "cache").glob("*/manifest.json"):
        out[json.loads(manifest.read_text())["split"]] = manifest.parent
    return out


@pytest.fixture(scope="module")
def damaged_cache_runs(prefect_server, tmp_path_factory):
    """A first run; the val entry removed (as `kdflow cache gc` may), a distill parameter changed,
    run again; then a file of the train entry truncated, another distill value, run again."""
    from flows.runner import run_pipeline

    home = tmp_path_factory.mktemp("defects-home")
    with kdflow_home(home):
        first = run_pipeline(config_from_dict(copy.deepcopy(NO_BASELINE)))
        shutil.rmtree(_entries(home)["val"])
        val_gone = run_pipeline(config_from_dict(copy.deepcopy(NO_BASELINE), ["distill.temperature=2"]))
        logits = _entries(home)["train"] / "logits.npy"
        logits.write_bytes(logits.read_bytes()[:-100])
        train_damaged = run_pipeline(config_from_dict(copy.deepcopy(NO_BASELINE), ["distill.temperature=3"]))
    return home, first, val_gone, train_damaged


def test_a_removed_val_entry_is_rebuilt(damaged_cache_runs):
    home, first, val_gone, _ = damaged_cache_runs
    stages = val_gone["stages"]
    assert not stages["features"]["cached"] and not stages["distill"]["cached"]
    assert stages["teacher"]["cached"] and stages["pretrain"]["cached"], "only what the cache feeds reruns"
    assert stages["features"]["fingerprint"] == first["stages"]["features"]["fingerprint"]
    assert set(_entries(home)) == {"train", "val"}
    assert val_gone["models"]["student"]["top1"] > 0.5


def test_a_truncated_train_entry_is_rebuilt(damaged_cache_runs):
    from kdcore.cache import open_entry

    home, _, _, train_damaged = damaged_cache_runs
    assert not train_damaged["stages"]["features"]["cached"]
    assert train_damaged["models"]["student"]["top1"] > 0.5
    train = _entries(home)["train"]
    open_entry(home / "cache", json.loads((train / "manifest.json").read_text())["key"])  # intact again


def _flaky_distill(monkeypatch, failures: int) -> list[int]:
    """Logging distillation's epochs 1, 2, ... (each already checkpointed) fails once each, up to
    ``failures`` times, with a transient (non-kdflow) error; a retry resumes after the failed epoch."""
    from tasks import stage as stage_module

    failed: list[int] = []
    original = stage_module.TrackingCallbacks.on_epoch_end

    def flaky(self, epoch, metrics):
        if self.stage == "distill" and epoch >= 1 and epoch not in failed and len(failed) < failures:
            failed.append(epoch)
            raise ConnectionError("tracking server went away")
        original(self, epoch, metrics)

    monkeypatch.setattr(stage_module.TrackingCallbacks, "on_epoch_end", flaky)
    return failed


def _distill_runs(home: Path) -> list:
    c = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    exp = c.get_experiment_by_name("tiny")
    return c.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'distill'")


def test_retries_zero_means_a_failing_training_stage_is_not_retried(prefect_server, tmp_path, monkeypatch):
    from flows.runner import run_pipeline

    failed = _flaky_distill(monkeypatch, failures=1)
    raw = copy.deepcopy(NO_BASELINE)
    raw["trainer"] = {"retries": 0}
    raw["distill"] = {"train": {"max_epochs": 3, "batch_size": 64}}
    with kdflow_home(tmp_path), pytest.raises(ConnectionError, match="tracking server went away"):
        run_pipeline(config_from_dict(raw))
    assert failed == [1]
    runs = _distill_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"] and "kdflow.attempts" not in runs[0].data.tags
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parents = c.search_runs([runs[0].info.experiment_id], filter_string="tags.`kdflow.kind` = 'pipeline'")
    assert [r.info.status for r in parents] == ["FAILED"]


def test_retries_two_outlast_two_transient_failures(prefect_server, tmp_path, monkeypatch):
    """The default (1) is exercised by test_reliability; two retries resume twice into one run."""
    from flows.runner import run_pipeline

    failed = _flaky_distill(monkeypatch, failures=2)
    raw = copy.deepcopy(NO_BASELINE)
    raw["trainer"] = {"retries": 2}
    raw["distill"] = {"train": {"max_epochs": 3, "batch_size": 64}}
    with kdflow_home(tmp_path):
        report = run_pipeline(config_from_dict(raw))
    assert failed == [1, 2]
    runs = _distill_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"] and runs[0].data.tags["kdflow.attempts"] == "3"
    assert report["stages"]["distill"]["mlflow_run_id"] == runs[0].info.run_id


def test_a_kdflow_error_inside_a_stage_is_one_line_on_stderr(prefect_server, tmp_path):
    """Distillation diverges (a DivergenceError raised inside the distill task): the CLI's stderr
    holds kdflow's one `error:` line, without Prefect's records of the failure or a traceback."""
    cfg = copy.deepcopy(NO_BASELINE)
    cfg["distill"] = {"train": {"max_epochs": 3, "lr": 1e12, "momentum": 0.0}}
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "KDFLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_LOGGING_LEVEL", None)  # the CLI's own default (WARNING), as a user gets it
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(tmp_path / "nan.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: distill: loss became"), proc.stderr


def test_a_missing_cache_entry_names_a_command_that_exists(tmp_path):
    """Should a cache entry vanish while a stage reads it, the message says what to run."""
    from typer.main import get_command

    from flows.cli import app
    from kdcore.cache import CacheError
    from tasks.cache_entries import open_entries
    from tasks.records import StageRecord

    class Call:
        home = tmp_path
        cfg = config_from_dict(copy.deepcopy(TINY))
        inputs = {"features": StageRecord(stage="features", fingerprint="f", info={"keys": {"val": "k" * 64}})}

    with pytest.raises(CacheError) as err:
        open_entries(Call())
    message = str(err.value)
    assert "does not exist" in message and "rerun the features stage" not in message
    commands = get_command(app).commands
    assert "`kdflow run`" in message and "run" in commands
    assert "`kdflow cache verify`" in message and "verify" in commands["cache"].commands
