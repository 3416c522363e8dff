"""The whole pipeline under Prefect's test server with a temporary SQLite MLflow store.

One module-scoped home: a first run, an unchanged rerun, and a rerun with one distill parameter
changed."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import TINY, kdflow_home
from kdcore.config import config_from_dict

STAGES = {"teacher", "features", "pretrain", "distill", "baseline", "evaluate", "register", "export"}


@pytest.fixture(scope="module")
def runs(prefect_server, tmp_path_factory):
    from flows.runner import run_pipeline

    home = tmp_path_factory.mktemp("pipeline-home")
    with kdflow_home(home):
        cfg = config_from_dict(copy.deepcopy(TINY))
        first = run_pipeline(cfg)
        second = run_pipeline(cfg)
        changed = run_pipeline(config_from_dict(copy.deepcopy(TINY), ["distill.temperature=2"]))
        manifests = {p: p.stat().st_mtime_ns for p in (home / "cache").glob("*/manifest.json")}
        other_student = run_pipeline(
            config_from_dict(copy.deepcopy(TINY), ["student.arch=cnn", "student.kwargs.channels=[4,8]"])
        )
        manifests_after = {p: p.stat().st_mtime_ns for p in (home / "cache").glob("*/manifest.json")}
        Path(first["artifacts"]["pretrain"]).unlink()  # a cached stage's artifact disappears
        healed = run_pipeline(cfg)
    return home, first, second, changed, (other_student, manifests, manifests_after, healed)


def client(home: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


def test_first_run_creates_parent_and_stage_runs_with_metrics(runs):
    home, first, _, _, _ = runs
    c = client(home)
    parent = c.get_run(first["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kdflow.prefect_flow_run_id"] == first["prefect_flow_run_id"]
    assert parent.data.tags["kdflow.config_hash"] == first["config_hash"]
    children = c.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    names = {r.info.run_name for r in children}
    assert names == STAGES and len(children) >= 6
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.metrics, f"stage run {r.info.run_name} has no metrics"
        assert r.data.params["stage"] == r.info.run_name
    teacher = next(r for r in children if r.info.run_name == "teacher")
    history = c.get_metric_history(teacher.info.run_id, "val_top1")
    assert [m.step for m in history] == [0, 1], "per-epoch metrics are logged with steps"
    assert set(first["stages"]) == STAGES and not any(s["cached"] for s in first["stages"].values())


def test_models_are_registered_with_lineage(runs):
    home, first, _, _, _ = runs
    c = client(home)
    versions = c.search_model_versions("name='tiny-teacher'") + c.search_model_versions("name='tiny-student'")
    assert len(versions) >= 2
    student = c.get_model_version("tiny-student", first["registered"]["tiny-student"])
    assert student.tags["kdflow.teacher_model"] == f"tiny-teacher/{first['registered']['tiny-teacher']}"
    assert student.tags["kdflow.data_fingerprint"] == first["data_fingerprint"]
    assert student.tags["kdflow.config_hash"] == first["config_hash"]
    assert sorted(first["registered_new"]) == ["tiny-student", "tiny-teacher"]


def test_distillation_and_teacher_learn(runs):
    _, first, _, _, _ = runs
    m = first["models"]
    assert m["teacher"]["top1"] > 0.8, m["teacher"]
    assert m["student"]["top1"] > 0.3 and m["baseline"]["top1"] > 0.3  # 10 classes: chance is 0.1
    for name in ("teacher", "baseline", "student"):
        assert m[name]["params"] > 0 and m[name]["flops"] > 0 and m[name]["latency_ms"] > 0
    assert m["teacher"]["params"] > 5 * m["student"]["params"]


def test_unchanged_rerun_is_fully_cached_and_registers_nothing(runs):
    home, first, second, _, _ = runs
    assert all(s["cached"] for s in second["stages"].values()), second["stages"]
    assert second["registered"] == first["registered"] and second["registered_new"] == []
    c = client(home)
    # versions come only from runs that changed the student (first, changed temperature, other
    # student); the unchanged rerun added none, and the teacher was registered once
    assert len(c.search_model_versions("name='tiny-student'")) == 3
    assert len(c.search_model_versions("name='tiny-teacher'")) == 1
    for stage in STAGES:
        assert second["stages"][stage]["fingerprint"] == first["stages"][stage]["fingerprint"]


def test_changed_distill_parameter_reruns_only_what_depends_on_it(runs):
    _, first, _, changed, _ = runs
    cached = {s for s, i in changed["stages"].items() if i["cached"]}
    assert cached == {"teacher", "features", "pretrain", "baseline"}
    assert changed["stages"]["teacher"]["fingerprint"] == first["stages"]["teacher"]["fingerprint"]
    assert changed["stages"]["distill"]["fingerprint"] != first["stages"]["distill"]["fingerprint"]
    assert changed["registered_new"] == ["tiny-student"], "the unchanged teacher is not registered again"


def test_another_student_reuses_the_teacher_cache_entry(runs):
    _, first, _, _, (other, before, after, _) = runs
    assert other["stages"]["teacher"]["cached"] and other["stages"]["features"]["cached"]
    assert other["stages"]["features"]["fingerprint"] == first["stages"]["features"]["fingerprint"]
    assert not other["stages"]["distill"]["cached"] and not other["stages"]["baseline"]["cached"]
    assert before and before == after, "the cache entries were not rewritten"
    assert other["models"]["student"]["params"] != first["models"]["student"]["params"]


def test_a_cached_stage_whose_artifact_vanished_is_recomputed(runs):
    _, first, _, _, (_, _, _, healed) = runs
    st = healed["stages"]
    assert not st["pretrain"]["cached"], "the missing student initialisation was rebuilt"
    assert Path(first["artifacts"]["pretrain"]).exists()
    assert all(st[s]["cached"] for s in ("teacher", "features", "baseline"))
    assert st["distill"]["fingerprint"] == first["stages"]["distill"]["fingerprint"]


@pytest.fixture(scope="module")
def export_reruns(runs):
    """In the same home: an unchanged rerun (its stage events and the exported file's mtime seen),
    then a rerun after the exported file was deleted."""
    from flows.runner import run_pipeline
    from tasks import events

    home = runs[0]
    cfg = config_from_dict(copy.deepcopy(TINY))
    with kdflow_home(home):
        before = run_pipeline(cfg)
        exported = Path(before["export"]["path"])
        mtime = exported.stat().st_mtime_ns
        seen: list = []
        with events.subscribed(seen.append):
            unchanged = run_pipeline(cfg)
        mtime_after = exported.stat().st_mtime_ns
        exported.unlink()
        rebuilt = run_pipeline(cfg)
    return home, unchanged, seen, (mtime, mtime_after), rebuilt


def test_an_unchanged_rerun_runs_nothing_not_even_the_export(export_reruns):
    home, unchanged, seen, (mtime, mtime_after), _ = export_reruns
    assert set(unchanged["stages"]) == STAGES
    assert all(s["cached"] for s in unchanged["stages"].values()), unchanged["stages"]
    assert not [e for e in seen if e.kind in ("running", "epoch", "done")], "a task ran again"
    assert {e.stage for e in seen if e.kind == "cached"} == STAGES
    assert mtime_after == mtime, "the exported file was written again"
    assert unchanged["export"]["max_abs_diff"] <= 1e-4 and Path(unchanged["export"]["path"]).is_file()
    c = client(home)
    parent = c.get_run(unchanged["mlflow_parent_run_id"])
    children = c.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert children == [], "a cached rerun opens no stage run"


def test_a_deleted_export_is_rebuilt_and_nothing_else(export_reruns):
    home, unchanged, _, _, rebuilt = export_reruns
    st = rebuilt["stages"]
    assert {s for s, i in st.items() if not i["cached"]} == {"export"}
    assert st["export"]["fingerprint"] == unchanged["stages"]["export"]["fingerprint"]
    assert Path(rebuilt["export"]["path"]).is_file()
    student = client(home).get_model_version("tiny-student", rebuilt["registered"]["tiny-student"])
    assert student.tags["kdflow.export_uri"] == rebuilt["export"]["artifact_uri"]


FAST = ["trainer.amp=bf16", "trainer.channels_last=true", "cache.precision=amp"]


@pytest.fixture(scope="module")
def fast_runs(runs):
    """In the same home: the CPU speed settings (bf16 autocast, NHWC, a cache built under the
    autocast) through the whole pipeline, then the same run again."""
    import tasks.stage
    from flows.runner import run_pipeline

    home = runs[0]
    manifests = {p: p.stat().st_mtime_ns for p in (home / "cache").glob("*/manifest.json")}
    released: list[tuple[int, bool]] = []  # (thread, taken) of every OpenMP pool handed back
    real = tasks.stage.release_thread_pool

    def recording() -> bool:
        released.append((threading.get_ident(), real()))
        return released[-1][1]

    with kdflow_home(home), pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks.stage, "release_thread_pool", recording)
        fast = run_pipeline(config_from_dict(copy.deepcopy(TINY), FAST))
        again = run_pipeline(config_from_dict(copy.deepcopy(TINY), FAST))
    return home, fast, again, manifests, (threading.get_ident(), released)


def test_the_cpu_speed_settings_run_end_to_end_keyed_apart_and_cached(runs, fast_runs):
    _, first, _, _, _ = runs
    home, fast, again, manifests, _ = fast_runs
    st = fast["stages"]
    assert not any(st[s]["cached"] for s in ("teacher", "features", "distill", "baseline")), st
    assert st["features"]["fingerprint"] != first["stages"]["features"]["fingerprint"]
    c = client(home)
    features = c.get_run(st["features"]["mlflow_run_id"]).data.params
    assert features["precision.cache"] == "amp" and features["precision.amp"] == "bf16"
    assert features["channels_last"] == "true"
    distill = c.get_run(st["distill"]["mlflow_run_id"]).data.params
    assert distill["trainer.amp"] == "bf16" and distill["trainer.channels_last"] == "true"
    after = {p: p.stat().st_mtime_ns for p in (home / "cache").glob("*/manifest.json")}
    assert manifests and all(after[p] == t for p, t in manifests.items()), "a float32 entry was rewritten"
    assert len(after) > len(manifests), "the bf16 entries were built beside them"
    m = fast["models"]
    assert m["teacher"]["top1"] > 0.8 and m["student"]["top1"] > 0.3, m
    assert "tiny-student" in fast["registered_new"]
    assert all(s["cached"] for s in again["stages"].values()), again["stages"]
    assert again["registered_new"] == []


def test_a_channels_last_student_is_registered_in_the_standard_memory_format(fast_runs, tmp_path):
    import mlflow

    from kdcore.data import load_dataset
    from kdcore.train.checkpoint import load_model
    from tasks.tracking import process_uri

    home, fast, _, _, _ = fast_runs
    with process_uri(f"sqlite:///{home / 'mlflow.db'}"):
        uri = f"models:/tiny-student/{fast['registered']['tiny-student']}"
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path))
    registered = mlflow.pytorch.load_model(local)
    assert all(p.is_contiguous() for p in registered.parameters()), "NHWC-strided weights were logged"
    x = load_dataset(config_from_dict(copy.deepcopy(TINY)).data).test.x[:16]
    trained = load_model(Path(fast["artifacts"]["distill"])).eval()
    with torch.no_grad():
        assert torch.allclose(registered(x), trained(x), atol=1e-4)


def test_the_flow_and_every_stage_thread_hand_back_their_openmp_pools(fast_runs):
    """An idle pool beside the training thread slows it (kdcore/train/openmp.py): the flow's thread
    hands its pool back before it waits for a stage, and each stage's worker thread when it ends."""
    _, fast, _, _, (flow_thread, released) = fast_runs
    assert released and all(taken for _, taken in released), released
    assert any(t == flow_thread for t, _ in released), "the waiting flow thread kept its pool"
    ran = [s for s, info in fast["stages"].items() if not info["cached"]]
    in_stages = [t for t, _ in released if t != flow_thread]
    assert len(in_stages) >= len(ran), (len(in_stages), ran)
