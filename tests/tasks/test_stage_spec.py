"""The stage declarations (tasks/spec.py) and the stage events a pipeline publishes."""

from __future__ import annotations

import copy
import inspect

import pytest

from conftest import TINY, kdflow_home
from kdcore.config import config_from_dict

ORDER = ["teacher", "features", "pretrain", "distill", "baseline", "evaluate", "register", "export"]


def test_the_declarations_form_a_dag_in_declaration_order():
    from tasks.spec import STAGES

    assert list(STAGES) == ORDER
    seen: set[str] = set()
    for name, spec in STAGES.items():
        assert spec.name == name and set(spec.inputs) <= seen, f"{name} consumes a stage declared after it"
        seen.add(name)
    assert {n for n, s in STAGES.items() if s.training} == {"teacher", "pretrain", "distill", "baseline"}
    assert [STAGES[n].task.name for n in ORDER] == ORDER, "Prefect task names are the stage names"
    assert STAGES["distill"].task.tags == {"gpu"} and not STAGES["evaluate"].task.tags


def test_no_other_stage_list_remains():
    import flows.pipeline
    import kdcore.config
    import tasks.fingerprints
    import tasks.stage

    assert not hasattr(kdcore.config, "STAGES") and not hasattr(tasks.fingerprints, "INPUTS")
    assert not hasattr(tasks.stage, "TRAINING_STAGES") and not hasattr(flows.pipeline, "TASKS")
    source = inspect.getsource(flows.pipeline)
    assert '"teacher", "features"' not in source, "the pipeline does not spell out the stage order"


def test_fingerprints_keep_their_values(monkeypatch):
    """The readers in the declarations compute what the old if-chain did (values recorded before
    the declarations existed, with the code version held fixed): cached homes stay valid. A
    deliberate change of the config schema or of TINY changes these; recompute them then (the last:
    evaluate.fit_samples, which changed evaluate's and so register's and export's)."""
    import kdcore.fingerprint
    from tasks.fingerprints import fingerprint

    monkeypatch.setattr(kdcore.fingerprint, "code_version", lambda: "fixed")
    expected = {
        "teacher": "68ba24f73f42ee20cf79d60efe8924b283598fdbec873bbc3527950505552310",
        "features": "560db228f1da68ddfa133ef4ba51fd7e8e27c64db83279d4de78df99a95e24f2",
        "pretrain": "f8e861302b7a59c1965941f8f74b8798f4f60c1e4964fe052075b662a2725bbe",
        "distill": "5c0be9207b73ffb65934fbabb88527c587b7b226d490b79be078ba4e6dc77c63",
        "baseline": "b3bdcc5f059019f333a25e51f6546e3ed7169f5d038528cd9eb101b06c9adfc1",
        "evaluate": "808534d7c54fd18c81f0ed4c7568d0867408381fea9d729898c846c1b6e4ab5a",
        "register": "4813cea887a42096f56dceb80225d9f6e26303266f96393b2d692f857127aa4d",
        "export": "926f1925d6d0a46721769b847f053c53d4128290f28022be92c69aac2ca308c3",
    }
    cfg = config_from_dict(copy.deepcopy(TINY))
    records: dict[str, dict] = {}
    for stage in ORDER:
        records[stage] = {"fingerprint": fingerprint(stage, cfg, "data-fingerprint", records)}
    assert {s: r["fingerprint"] for s, r in records.items()} == expected


def test_a_retried_training_stage_takes_trainer_retries():
    from tasks.spec import STAGES

    cfg = config_from_dict(copy.deepcopy(TINY), ["trainer.retries=3"])
    assert STAGES["distill"].task_for(cfg).retries == 3
    assert STAGES["evaluate"].task_for(cfg).retries == 0


def test_progress_callbacks_become_stage_events():
    from tasks import events
    from tasks.stage import TrackingCallbacks

    seen: list = []
    with events.subscribed(seen.append):
        TrackingCallbacks(None, "run", "features").on_progress("samples", 3, 10)
    assert [(e.stage, e.kind, e.what, e.done, e.total) for e in seen] == [("features", "progress", "samples", 3, 10)]


def _kinds(seen, stage: str) -> list[str]:
    return [e.kind for e in seen if e.stage == stage]


def test_a_pipeline_publishes_each_stage_s_events(prefect_server, tmp_path):
    """First run: every stage waits, runs (training stages report each epoch) and is done; an
    unchanged rerun: every stage waits and is cached, none runs."""
    from flows.deploy import ensure_gpu_limit
    from flows.runner import run_pipeline
    from tasks import events, tag_limits

    cfg = config_from_dict(copy.deepcopy(TINY))
    first: list = []
    again: list = []
    with kdflow_home(tmp_path):
        with events.subscribed(first.append):
            untagged = run_pipeline(cfg)
        ensure_gpu_limit(4)  # what `kdflow deploy` sets up: now the training stages carry the tag
        try:
            with events.subscribed(again.append):
                report = run_pipeline(cfg)
        finally:
            _delete_gpu_limit()
            tag_limits.forget()
    assert all(s["cached"] for s in report["stages"].values())
    # the `gpu` tag goes with the training stages only where the server limits it (tasks/tag_limits.py)
    assert _task_tags(untagged) == {s: set() for s in ORDER}
    assert _task_tags(report) == {s: {"gpu"} if s in TRAINING else set() for s in ORDER}

    assert [e.stage for e in first[: len(ORDER)]] == ORDER and {e.kind for e in first[: len(ORDER)]} == {"waiting"}
    for stage in ("teacher", "distill", "baseline"):
        assert _kinds(first, stage) == ["waiting", "running", "epoch", "epoch", "done"], stage
        epochs = [e for e in first if e.stage == stage and e.kind == "epoch"]
        assert [(e.epoch, e.max_epochs) for e in epochs] == [(0, 2), (1, 2)] and "train_loss" in epochs[0].metrics
    for stage in ("features", "evaluate", "register", "export"):
        assert [k for k in _kinds(first, stage) if k != "progress"] == ["waiting", "running", "done"], stage
    done = [e.stage for e in first if e.kind == "done"]
    for stage, upstream in (
        ("features", "teacher"),
        ("pretrain", "features"),
        ("distill", "pretrain"),
        ("evaluate", "distill"),
        ("evaluate", "baseline"),
        ("register", "evaluate"),
        ("export", "register"),
    ):
        assert done.index(upstream) < done.index(stage)

    for stage in ORDER:
        assert _kinds(again, stage) == ["waiting", "cached"], stage


TRAINING = {"teacher", "pretrain", "distill", "baseline"}


def _task_tags(report: dict) -> dict[str, set[str]]:
    """Each stage's task run tags, read back from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[report["prefect_flow_run_id"]]))
        )
    return {r.name.rsplit("-", 1)[0]: set(r.tags) for r in runs}


def _delete_gpu_limit() -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.delete_concurrency_limit_by_tag("gpu")


@pytest.mark.parametrize("name", ["nope"])
def test_an_unknown_stage_is_named(name):
    from tasks.spec import stage_spec

    with pytest.raises(ValueError, match="unknown stage 'nope'; the stages are teacher, features"):
        stage_spec(name)
