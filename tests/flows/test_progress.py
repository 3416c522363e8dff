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
from tasks.events import StageEvent, emit, scoped

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
def piped_home(prefect_server, tmp_path_factory):  # the runs use the session's Prefect server
    tmp = tmp_path_factory.mktemp("piped")
    return _kdflow([], tmp / "home", tmp), tmp


def test_progress_lines_for_each_stage_and_epoch_when_piped(piped_home):
    piped_run, _ = piped_home
    out = piped_run.stdout
    assert piped_run.returncode == 0, piped_run.stderr[-3000:]
    for stage in ("teacher", "features", "pretrain", "distill", "baseline", "evaluate", "register", "export"):
        assert f"[{stage}] running" in out or f"[{stage}] cached" in out, (stage, out)
        assert f"[{stage}] done" in out or f"[{stage}] cached" in out, (stage, out)
    for stage in ("teacher", "distill", "baseline"):  # TINY: two epochs each
        for n in (1, 2):
            assert f"[{stage}] epoch {n}/2" in out, (stage, n, out)
    assert out.index("[teacher] done") < out.index("models on the test split")


def test_quiet_prints_only_the_result(piped_home):
    # the piped run's home again (every stage cached: the result is printed all the same, and the
    # suite is spared a second fresh home's MLflow store and training)
    _, tmp = piped_home
    first = _kdflow(["--quiet"], tmp / "home", tmp)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = [line for line in first.stdout.splitlines() if line.strip()]
    assert lines[0].strip() == "models on the test split", first.stdout
    assert lines[-1].startswith("registered: tiny-teacher v1, tiny-student v1"), first.stdout
    assert not any(line.startswith("[") for line in lines), first.stdout  # no progress
    assert "stages" not in first.stdout and "MLflow:" not in first.stdout and "Prefect" not in first.stdout
    assert [line.split()[0] for line in lines[3:6]] == ["teacher", "baseline", "student"], first.stdout


def _feed_trials(console: Console) -> None:
    """A sweep's events: shared stages unscoped; each trial's own start and end, and its stages
    scoped to it (as flows/sweep.py emits them)."""
    with live_progress(console):
        emit("teacher", "running")
        emit("teacher", "done")
        for i in (0, 1):
            emit(f"trial {i}", "waiting", message=f"distill.temperature={i + 2}")
        for i in (0, 1):
            emit(f"trial {i}", "running", message=f"distill.temperature={i + 2}")
            with scoped(f"trial {i}"):
                emit("distill", "waiting")
                emit("teacher", "cached")
                emit("distill", "running")
                emit("distill", "epoch", epoch=0, max_epochs=2, metrics={"train_loss": 0.5, "val_top1": 0.8})
        with scoped("trial 1"):
            emit("distill", "failed", message="diverged")
        emit("trial 1", "failed", message="DivergenceError: diverged")
        with scoped("trial 0"):
            emit("distill", "done")
        emit("trial 0", "done", message="student top-1 81.00%")


def test_a_sweep_s_plain_lines_name_the_trial_and_its_stage():
    console = Console(record=True, force_terminal=False, width=120)
    _feed_trials(console)
    lines = console.export_text().splitlines()
    assert lines[:2] == ["[teacher] running", lines[1]] and lines[1].startswith("[teacher] done")
    assert "[trial 0] running (distill.temperature=2)" in lines
    assert "[trial 0 teacher] cached (skipped)" in lines
    assert any(line.startswith("[trial 1 distill] epoch 1/2, loss 0.5000, val_top1 80.00%") for line in lines)
    assert any(line.startswith("[trial 1 distill] failed") and line.endswith("diverged") for line in lines)
    assert lines[-1].startswith("[trial 0] done") and lines[-1].endswith("student top-1 81.00%")
    assert not any(line.startswith("[distill]") for line in lines), "a trial's stage has no line of its own"


def test_a_sweep_s_terminal_display_has_a_line_per_trial_with_its_current_stage():
    board = Board()
    board.update(StageEvent("teacher", "done"))
    board.update(StageEvent("trial 0", "waiting", message="distill.temperature=2"))
    board.update(StageEvent("trial 1", "waiting", message="distill.temperature=3"))
    board.update(StageEvent("trial 0", "running"))
    board.update(StageEvent("distill", "running", scope="trial 0"))
    board.update(StageEvent("distill", "epoch", epoch=2, max_epochs=10, metrics={"train_loss": 0.25}, scope="trial 0"))
    console = Console(record=True, width=100, force_terminal=True)
    console.print(board)
    rows = [line for line in console.export_text().splitlines() if line.strip()]
    assert [r.split()[0] for r in rows] == ["teacher", "trial", "trial"]
    assert "running" in rows[1] and "distill: running, epoch 3/10, loss 0.2500" in rows[1]
    assert "waiting" in rows[2] and "distill.temperature=3" in rows[2]


@pytest.fixture(scope="module")
def ops_runs(prefect_server, tmp_path_factory):
    """`kdflow sweep` (2 trials), the same again with --quiet (every stage cached), and
    `kdflow retrain` in another home, in this process with stdout captured (not a terminal)."""
    from typer.testing import CliRunner

    from flows.cli import app

    tmp = tmp_path_factory.mktemp("ops-progress")
    raw = {**TINY, "distill": {"train": {"max_epochs": 1, "batch_size": 64}}, "baseline": {"enabled": False}}
    raw["evaluate"] = {**TINY["evaluate"], "latency": False}
    sweep = tmp / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({**raw, "sweep": {"grid": {"distill.temperature": [2.0, 4.0]}, "profile": False}}))
    retrain = tmp / "retrain.yaml"
    retrain.write_text(yaml.safe_dump(raw))
    runner = CliRunner()

    def kdflow(home: str, *args: str):
        return runner.invoke(app, list(args), env={"KDFLOW_HOME": str(tmp / home), "COLUMNS": "120"})

    return (
        kdflow("s", "sweep", str(sweep)),
        kdflow("s", "sweep", str(sweep), "--quiet"),
        kdflow("r", "retrain", str(retrain)),
    )


def test_sweep_shows_a_line_per_trial_and_stage(ops_runs):
    first, _, _ = ops_runs
    assert first.exit_code == 0, first.output[-3000:]
    out = first.output
    assert "[teacher] done" in out and "[features] done" in out
    for i in (0, 1):
        assert f"[trial {i}] running" in out and f"[trial {i}] done" in out, out
        assert f"[trial {i} distill] epoch 1/1" in out, out
        assert f"[trial {i} evaluate] done" in out, out
    assert out.index("[trial 0] done") < out.index("results:")


def test_sweep_quiet_prints_only_the_result(ops_runs):
    _, quiet, _ = ops_runs
    assert quiet.exit_code == 0, quiet.output[-3000:]
    assert not [line for line in quiet.output.splitlines() if line.startswith("[")], quiet.output
    assert "results:" in quiet.output
    # the trials' table: a header line with every column, then one row per trial starting with its index
    lines = quiet.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["trial", "overrides"])
    assert lines[header].split()[2:] == ["status", "top1", "gain", "ms@1", "KiB", "pareto"], quiet.output
    rows = [line.split() for line in lines[header + 2 :] if line.split() and line.split()[0] in ("0", "1")]
    assert [r[0] for r in rows] == ["0", "1"] and all("completed" in r for r in rows), quiet.output


def test_retrain_shows_the_pipeline_s_stages(ops_runs):
    _, _, retrain = ops_runs
    assert retrain.exit_code == 0, retrain.output[-3000:]
    out = retrain.output
    for stage in ("teacher", "distill", "evaluate", "register"):
        assert f"[{stage}] done" in out, (stage, out)
    assert "[distill] epoch 1/1" in out
    assert out.index("[register] done") < out.index("decision:")
    assert "champion: v1 (before: none)" in out and "v-" not in out, out  # no champion yet: said in words
    # the versions were registered without MLflow's own lines on stderr (the summary says what was)
    assert "Successfully registered model" not in out and "Created version" not in out, out
