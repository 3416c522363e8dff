"""Live progress: the display follows the stage events; `--quiet` prints only the result; plain
lines per stage and epoch when stdout is not a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from conftest import TINY
from flows.progress import Board, live_progress
from tasks.events import emit

ROOT = Path(__file__).resolve().parents[2]


def _feed(console: Console, quiet: bool = False) -> None:
    with live_progress(console, quiet=quiet, stages=("teacher", "features", "baseline")):
        emit("baseline", "cached")
        emit("teacher", "running")
        for epoch in range(3):
            emit(
                "teacher",
                "epoch",
                epoch=epoch,
                max_epochs=3,
                metrics={"train_loss": 1.5 - epoch / 2, "val_top1": 0.5 + epoch / 10, "lr": 0.1},
            )
        emit("teacher", "done")
        emit("features", "running")
        for done in range(0, 101, 10):
            emit("features", "progress", what="train", done=done, total=100)
        emit("features", "failed", message="disk full")


def test_plain_lines_when_stdout_is_not_a_terminal():
    console = Console(record=True, force_terminal=False, width=100)
    _feed(console)
    lines = console.export_text().splitlines()
    assert lines[0] == "[baseline] cached (skipped)"
    assert lines[1] == "[teacher] running"
    epochs = [line for line in lines if line.startswith("[teacher] epoch")]
    assert [line.split(",")[0] for line in epochs] == [
        "[teacher] epoch 1/3",
        "[teacher] epoch 2/3",
        "[teacher] epoch 3/3",
    ]
    assert "loss 1.5000" in epochs[0] and "val_top1 50.00%" in epochs[0] and "ETA" in epochs[0]
    assert "ETA" not in epochs[-1] or "ETA 0s" in epochs[-1]
    assert lines[5].startswith("[teacher] done in ")
    cache = [line for line in lines if line.startswith("[features] train")]
    assert cache[0] == "[features] train 0/100" and cache[-1] == "[features] train 100/100"
    assert len(cache) == 5  # a line per quarter, not one per batch
    assert lines[-1].startswith("[features] failed") and lines[-1].endswith(": disk full")


def test_quiet_shows_nothing():
    console = Console(record=True, force_terminal=False)
    _feed(console, quiet=True)
    assert console.export_text() == ""


def test_terminal_display_one_line_per_stage_with_epoch_loss_metric_and_cache_progress():
    board = Board(("teacher", "features", "pretrain", "distill", "baseline"))
    from tasks.events import StageEvent

    board.update(StageEvent("teacher", "running"))
    board.update(StageEvent("teacher", "epoch", epoch=1, max_epochs=10, metrics={"train_loss": 0.25, "val_top1": 0.9}))
    board.update(StageEvent("features", "running"))
    board.update(StageEvent("features", "progress", what="val", done=30, total=120))
    board.update(StageEvent("baseline", "cached"))
    console = Console(record=True, width=100, force_terminal=True)
    console.print(board)
    text = console.export_text()
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert set(rows) == {"teacher", "features", "pretrain", "distill", "baseline"}
    assert "running" in rows["teacher"] and "epoch 2/10" in rows["teacher"] and "loss 0.2500" in rows["teacher"]
    assert "val_top1 90.00%" in rows["teacher"] and "ETA" in rows["teacher"]
    assert "val 30/120 (25%)" in rows["features"]
    assert "waiting" in rows["pretrain"] and "cached" in rows["baseline"]


def _kdflow(args: list[str], home: Path, tmp: Path) -> subprocess.CompletedProcess:
    cfg = tmp / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    env = {
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        **os.environ,
        "KDFLOW_HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "100",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(cfg), *args],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("piped")
    return _kdflow([], tmp / "home", tmp)


def test_progress_lines_for_each_stage_and_epoch_when_piped(piped_run):
    out = piped_run.stdout
    assert piped_run.returncode == 0, piped_run.stderr[-3000:]
    for stage in ("teacher", "features", "pretrain", "distill", "baseline", "evaluate", "register"):
        assert f"[{stage}] running" in out or f"[{stage}] cached" in out, (stage, out)
        assert f"[{stage}] done" in out or f"[{stage}] cached" in out, (stage, out)
    for stage in ("teacher", "distill", "baseline"):  # TINY: two epochs each
        for n in (1, 2):
            assert f"[{stage}] epoch {n}/2" in out, (stage, n, out)
    assert out.index("[teacher] done") < out.index("models on the test split")


def test_quiet_prints_only_the_result(tmp_path):
    home = tmp_path / "home"
    first = _kdflow(["--quiet"], home, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [line for line in first.stdout.splitlines() if line.strip()]
    assert lines[0].strip() == "models on the test split", first.stdout
    assert lines[-1].startswith("registered: tiny-teacher v1, tiny-student v1"), first.stdout
    assert not any(line.startswith("[") for line in lines), first.stdout  # no progress
    assert "stages" not in first.stdout and "MLflow:" not in first.stdout and "Prefect" not in first.stdout
    assert [line.split()[0] for line in lines[3:6]] == ["teacher", "baseline", "student"], first.stdout
