"""The stages' schedule (``trainer.concurrent_stages``): ``false`` runs them one after the other in the
declared order (a stage waiting its turn shows as waiting); ``true`` runs the baseline beside the
distillation branch; both train the same bits; the setting is in no fingerprint; ``auto`` picks side
by side on the CPU and where each branch gets GPUs of its own.

Two tiny pipelines in fresh homes, one per mode, under Prefect's test server."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import TINY, kdflow_home
from kdcore.config import TrainerConfig, config_from_dict
from kdcore.fingerprint import file_sha256
from tasks import events
from tasks.spec import STAGES
from tasks.stage import runs_concurrently

TRAINING = [s for s, spec in STAGES.items() if spec.training]


@pytest.fixture(scope="module")
def runs(prefect_server, tmp_path_factory):
    from flows.runner import run_pipeline

    out = {}
    for mode in ("false", "true"):
        home = tmp_path_factory.mktemp(f"schedule-{mode}")
        seen: list[events.StageEvent] = []
        with kdflow_home(home), events.subscribed(seen.append):
            overrides = ["trainer.device=cpu", f"trainer.concurrent_stages={mode}"]
            cfg = config_from_dict(copy.deepcopy(TINY), overrides)
            report = run_pipeline(cfg)
        out[mode] = (home, report, seen)
    return out


def stage_runs(home: Path, report: dict) -> dict[str, tuple[int, int]]:
    """(start, end) in ms of each stage's MLflow run."""
    c = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    parent = c.get_run(report["mlflow_parent_run_id"])
    children = c.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return {r.info.run_name: (r.info.start_time, r.info.end_time) for r in children}


def overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_false_runs_the_stages_one_after_another_in_declared_order(runs):
    home, report, _ = runs["false"]
    assert report["schedule"] == "sequential"
    times = stage_runs(home, report)
    assert set(times) == set(report["stages"])
    for i, a in enumerate(TRAINING):
        for b in TRAINING[i + 1 :]:
            assert not overlap(times[a], times[b]), f"{a} {times[a]} and {b} {times[b]} ran at the same time"
    assert sorted(times, key=lambda s: times[s][0]) == list(report["stages"])  # the declared order, every time
    parent = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(report["mlflow_parent_run_id"])
    assert parent.data.tags["kdflow.schedule"] == "sequential"


def test_a_stage_waiting_its_turn_shows_as_waiting(runs):
    from flows.progress import Board

    _, report, seen = runs["false"]
    board = Board()
    states_when_running: dict[str, dict[str, str]] = {}
    for ev in seen:
        board.update(ev)
        if ev.kind == "running":
            states_when_running[ev.stage] = {s: line.status for s, line in board.lines.items()}
    stages = list(report["stages"])
    assert list(states_when_running) == stages
    for i, stage in enumerate(stages):
        states = states_when_running[stage]
        assert all(states[s] == "done" for s in stages[:i]), states
        assert all(states[s] == "waiting" for s in stages[i + 1 :]), states


def test_true_trains_the_baseline_beside_the_distillation_branch(runs):
    home, report, _ = runs["true"]
    assert report["schedule"] == "concurrent"
    times = stage_runs(home, report)
    assert overlap(times["baseline"], times["teacher"]), times


def test_the_schedule_is_not_part_of_any_fingerprint(runs):
    """Switching ``concurrent_stages`` reuses every cached stage."""
    (_, seq, _), (_, con, _) = runs["false"], runs["true"]
    assert report_stages(seq) == report_stages(con)
    for stage in report_stages(seq):
        assert seq["stages"][stage]["fingerprint"] == con["stages"][stage]["fingerprint"], stage
    assert seq["config_hash"] != con["config_hash"]  # the setting is in the config all the same


def test_side_by_side_and_one_after_the_other_train_the_same_weights(runs):
    """Side by side, one stage's MLflow log_model (torch.export) would change the numerics of a stage
    training beside it (bench/export_race.py); the compute gate (tasks/compute_gate.py) holds the
    trace until no stage computes, so both schedules give the same bits."""
    (_, seq, _), (_, con, _) = runs["false"], runs["true"]
    for stage in ("teacher", "baseline", "distill"):
        a, b = seq["artifacts"][stage], con["artifacts"][stage]
        assert a != b and file_sha256(a) == file_sha256(b), stage  # two homes, the same bits


def report_stages(report: dict) -> list[str]:
    return list(report["stages"])


@pytest.mark.parametrize(
    ("device", "devices", "gpus", "expected"),
    [
        ("cpu", 1, 0, False),  # measured faster one after the other (bench/schedule.py)
        ("cpu", 1, 4, False),
        ("auto", 1, 0, False),  # auto resolves to the CPU
        ("mps", 1, 0, False),
        ("cuda", 1, 1, False),  # one GPU for both
        ("cuda:0", 1, 4, False),  # one named GPU
        ("auto", 1, 2, True),  # a GPU per branch
        ("cuda", 1, 2, True),
        ("cuda", 2, 3, False),  # a 2-GPU DDP stage per branch needs 4
        ("cuda", 2, 4, True),
    ],
)
def test_auto_runs_side_by_side_only_where_each_branch_gets_its_own_gpus(monkeypatch, device, devices, gpus, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: device == "mps")
    trainer = TrainerConfig(device=device, devices=devices)
    assert runs_concurrently(trainer) is expected
    assert runs_concurrently(trainer.model_copy(update={"concurrent_stages": True})) is True
    assert runs_concurrently(trainer.model_copy(update={"concurrent_stages": False})) is False
