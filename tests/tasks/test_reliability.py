"""Crash and resume, atomic checkpoints, divergence: nothing lost, nothing wrongly registered."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import TINY
from kdcore.config import config_from_dict

ROOT = Path(__file__).resolve().parents[2]

SLOW_DISTILL = copy.deepcopy(TINY)
SLOW_DISTILL["data"] = {"name": "digits", "limit_train": 600, "limit_test": 100}
SLOW_DISTILL["distill"] = {"train": {"max_epochs": 8, "batch_size": 24}}
SLOW_DISTILL["baseline"] = {"enabled": False}
SLOW_DISTILL["register"] = {"teacher_name": "crash-teacher", "student_name": "crash-student"}
# bit-exact resume needs the same intra-op thread count in the killed process and in this one
SLOW_DISTILL["trainer"] = {"num_threads": 1}


def _use_home(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("KDFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _distill_weights(report: dict) -> dict[str, torch.Tensor]:
    run = Path(report["home"]) / "runs" / "distill"
    (workdir,) = [d for d in run.iterdir() if d.name.startswith(report["stages"]["distill"]["fingerprint"][:16])]
    return load_file(str(workdir / "student.safetensors"))


def test_sigkill_during_distillation_then_rerun_resumes_exactly(prefect_server, tmp_path, monkeypatch):
    from flows.runner import run_pipeline

    cfg_file = tmp_path / "crash.yaml"
    cfg_file.write_text(yaml.safe_dump(SLOW_DISTILL))

    # the run that is killed: a separate process, on the session's Prefect server (a temporary one of
    # its own would cost the suite half a minute and test nothing more: its flow run is left Running)
    killed_home = tmp_path / "killed"
    env = {**os.environ, "KDFLOW_HOME": str(killed_home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", str(cfg_file)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            done = sorted(killed_home.glob("runs/distill/*/checkpoints/epoch-*"))
            if any(p.name >= "epoch-0001" for p in done):
                break
            assert proc.poll() is None, (
                "the pipeline ended before it could be killed:\n" + (tmp_path / "killed.log").read_text()[-3000:]
            )
            time.sleep(0.02)
        else:
            pytest.fail("distillation never wrote its second checkpoint")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    killed_at = max(int(p.name.split("-")[1]) for p in killed_home.glob("runs/distill/*/checkpoints/epoch-*"))
    assert killed_at < 7, "the kill came before distillation finished"

    _use_home(monkeypatch, killed_home)
    resumed = run_pipeline(config_from_dict(copy.deepcopy(SLOW_DISTILL)))
    _use_home(monkeypatch, tmp_path / "clean")
    clean = run_pipeline(config_from_dict(copy.deepcopy(SLOW_DISTILL)))

    st = resumed["stages"]
    assert st["teacher"]["cached"] and st["features"]["cached"] and st["pretrain"]["cached"], st
    assert not st["distill"]["cached"]
    c = MlflowClient(f"sqlite:///{killed_home / 'mlflow.db'}")
    run = c.get_run(st["distill"]["mlflow_run_id"])
    assert run.data.params["stage"] == "distill"
    steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == list(range(8)), f"every epoch's metrics in the resumed run, none twice: {steps}"
    # epochs 0..killed_at were not trained again: their metrics are the killed run's, copied from the
    # checkpoint's history (a retrained epoch would have taken its own epoch_seconds)
    (killed_run,) = [
        r
        for r in c.search_runs([run.info.experiment_id], filter_string="tags.`kdflow.stage` = 'distill'")
        if r.info.run_id != run.info.run_id
    ]
    took = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "epoch_seconds")}
    took_killed = {m.step: m.value for m in c.get_metric_history(killed_run.info.run_id, "epoch_seconds")}
    assert 0 in took_killed, took_killed  # logged before epoch 1's checkpoint, so before the kill
    for epoch in range(killed_at + 1):
        if epoch in took_killed:  # the kill may land between an epoch's checkpoint and its metrics
            assert took[epoch] == took_killed[epoch], f"epoch {epoch} was trained again"
    a, b = _distill_weights(resumed), _distill_weights(clean)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs from the uninterrupted run"
    assert resumed["models"]["student"]["top1"] == clean["models"]["student"]["top1"]


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    from kdcore.config import TrainSpec
    from kdcore.models import create_model
    from kdcore.stages.env import classifier_val
    from kdcore.train import TrainCallbacks, fit
    from kdcore.train import checkpoint as ckpt

    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    model = create_model("cnn_tiny", in_channels=1, num_classes=3)

    def step(idx):
        return torch.nn.functional.cross_entropy(model(x[idx]), y[idx]), {}

    real_save = ckpt.save_file
    calls = {"n": 0}

    def dying_save(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # second epoch's checkpoint: write half a file, then "die"
            Path(path).write_bytes(b"\x00" * 100)
            raise KeyboardInterrupt("killed mid-write")
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    spec = TrainSpec(max_epochs=3, batch_size=16)
    with pytest.raises(KeyboardInterrupt):
        fit({"model": model}, step, 64, lambda: classifier_val(model, x, y), spec, ckpt_dir=tmp_path, run_key="k")
    # what a SIGKILL would leave: the half-written temporary directory stays behind
    assert ckpt.latest_training_checkpoint(tmp_path).name == "epoch-0000"
    stray = tmp_path / ".tmp-killed"
    stray.mkdir()
    (stray / "model.safetensors").write_bytes(b"garbage")
    monkeypatch.setattr(ckpt, "save_file", real_save)
    res = fit(
        {"model": model},
        step,
        64,
        lambda: classifier_val(model, x, y),
        spec,
        ckpt_dir=tmp_path,
        run_key="k",
        callbacks=TrainCallbacks(),
    )
    assert res.resumed_from == 1 and res.epochs_run == 3
    assert not stray.exists(), "leftovers of an interrupted write are cleaned up"


def test_divergence_stops_the_pipeline_with_epoch_and_step_and_registers_nothing(prefect_server, tmp_path, monkeypatch):
    """A diverged training is the user's to fix (a learning rate): it is not retried. Each stage that
    diverges raises once, its run ends FAILED, and the message names the stage, epoch and step."""
    import re

    from flows.cli import app
    from kdcore.errors import DivergenceError
    from kdcore.train import loop

    raised: list[str] = []

    class CountedDivergence(DivergenceError):
        def __init__(self, message: str):
            raised.append(message)
            super().__init__(message)

    monkeypatch.setattr(loop, "DivergenceError", CountedDivergence)
    _use_home(monkeypatch, tmp_path)
    cfg = copy.deepcopy(TINY)
    cfg["distill"] = {"train": {"max_epochs": 3, "lr": 1e12, "momentum": 0.0}}
    cfg["register"] = {"teacher_name": "nan-teacher", "student_name": "nan-student"}
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "nan.yaml")])
    assert result.exit_code == 2, result.output
    assert re.search(
        r"error: (distill|baseline): loss became (nan|-?inf) at epoch 1, step \d+; training stopped", result.stderr
    ), result.stderr
    stages = [m.split(":")[0] for m in raised]
    assert "distill" in stages and sorted(stages) == sorted(set(stages)), f"a diverged stage was retried: {raised}"
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert c.search_registered_models() == [] or not any(
        c.search_model_versions(f"name='{n}'") for n in ("nan-teacher", "nan-student")
    )
    exp = c.get_experiment_by_name("tiny")
    parents = c.search_runs([exp.experiment_id], filter_string="tags.`kdflow.kind` = 'pipeline'")
    assert [r.info.status for r in parents] == ["FAILED"]
    distill = c.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'distill'")
    assert [r.info.status for r in distill] == ["FAILED"]
    assert distill[0].data.tags.get("kdflow.attempts", "1") == "1", "the failed run was not reopened by a retry"
    assert "Traceback" not in result.output  # Prefect's crash log of a user error: issue 15, defect 9


def test_a_retried_training_task_resumes_into_the_same_mlflow_run(prefect_server, tmp_path, monkeypatch):
    """A transient failure while logging distillation's second epoch (already checkpointed): Prefect
    retries the task, which resumes from the checkpoint, logs the missing epoch and keeps logging into
    the run its first attempt opened."""
    from flows.runner import run_pipeline
    from tasks import stage as stage_module

    failed = []
    original = stage_module.TrackingCallbacks.on_epoch_end

    def flaky(self, epoch, metrics):
        if self.stage == "distill" and epoch == 1 and not failed:  # epoch 1 checkpointed, its metrics not logged
            failed.append(epoch)
            raise ConnectionError("tracking server went away")  # not a user error: retried
        original(self, epoch, metrics)

    monkeypatch.setattr(stage_module.TrackingCallbacks, "on_epoch_end", flaky)
    _use_home(monkeypatch, tmp_path)
    raw = copy.deepcopy(TINY)
    raw["distill"] = {"train": {"max_epochs": 3, "batch_size": 64}}
    raw["baseline"] = {"enabled": False}
    report = run_pipeline(config_from_dict(raw))
    assert failed == [1], "the injected failure happened"
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = report["mlflow_parent_run_id"]
    exp = c.get_run(parent).info.experiment_id
    runs = c.search_runs(
        [exp], filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`kdflow.stage` = 'distill'"
    )
    assert len(runs) == 1, "the retry reopened the first attempt's run"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["kdflow.attempts"] == "2"
    assert run.info.run_id == report["stages"]["distill"]["mlflow_run_id"]
    steps = sorted(m.step for m in c.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == [0, 1, 2], "epoch 0 from the first attempt, epoch 1 re-logged on resume, then epoch 2"
