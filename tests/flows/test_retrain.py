"""Champion / challenger: McNemar against scipy, when a retrain is due, the promotion rule, the
comparison and aliases on a real (SQLite) MLflow registry, and a failed retrain moving no alias.
The retrain flow end to end, on real Prefect and MLflow servers through deployments, is in
tests/test_integration_servers.py."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from scipy import stats

from conftest import TINY
from kdcore.config import config_from_dict
from kdcore.errors import CheckpointError, KdflowError
from kdcore.evaluate import per_sample_correct, predict
from kdcore.evaluate.promotion_rules import CHALLENGER, CHAMPION, Decision, Version, decide, fresh_seed, retrain_reasons
from kdcore.evaluate.significance import mcnemar_test


def _pairs(both: int, only_a: int, only_b: int, neither: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * both + [True] * only_a + [False] * only_b + [False] * neither)
    b = np.array([True] * both + [False] * only_a + [True] * only_b + [False] * neither)
    order = np.random.default_rng(seed).permutation(len(a))
    return a[order], b[order]


def test_mcnemar_agrees_with_scipy():
    a, b = _pairs(300, 30, 12, 58)
    r = mcnemar_test(a, b)
    assert (r.n, r.both_correct, r.only_a_correct, r.only_b_correct, r.both_wrong) == (400, 300, 30, 12, 58)
    assert r.accuracy_a == pytest.approx(330 / 400) and r.accuracy_b == pytest.approx(312 / 400)
    assert r.exact is False  # 42 discordant samples: chi-square with continuity correction
    assert r.statistic == pytest.approx((30 - 12 - 1) ** 2 / 42)
    assert r.p_value == pytest.approx(stats.chi2.sf((30 - 12 - 1) ** 2 / 42, 1))
    small_a, small_b = _pairs(50, 8, 2, 10)
    small = mcnemar_test(small_a, small_b)
    assert small.exact and small.p_value == pytest.approx(stats.binomtest(8, 10, 0.5).pvalue)
    assert mcnemar_test(a, a).p_value == 1.0
    with pytest.raises(KdflowError, match="different numbers of samples"):
        mcnemar_test(a, b[:10])


def _champion(days_old: float, data_fp: str = "d" * 64, promoted: bool = True) -> Version:
    now = datetime.now(timezone.utc)
    tags = {"kdflow.data_fingerprint": data_fp}
    if promoted:
        tags["kdflow.promoted_at"] = (now - timedelta(days=days_old)).isoformat()
    return Version("m", "3", "run", now - timedelta(days=days_old if not promoted else 400), tags)


def test_when_a_retrain_is_due():
    assert retrain_reasons(None, "d" * 64, 30, False) == ["no champion yet"]
    assert retrain_reasons(_champion(1), "d" * 64, 30, False) == []
    assert retrain_reasons(_champion(1), "d" * 64, 30, True) == ["forced"]
    changed = retrain_reasons(_champion(1), "e" * 64, 30, False)
    assert len(changed) == 1 and changed[0].startswith("data changed")
    old = retrain_reasons(_champion(45), "d" * 64, 30, False)
    assert len(old) == 1 and "45.0 days old (limit 30)" in old[0]
    assert retrain_reasons(_champion(45), "d" * 64, None, False) == []
    # without a promotion tag, the version's registration time counts
    assert "days old" in retrain_reasons(_champion(45, promoted=False), "d" * 64, 30, False)[0]


def test_promotion_rule_needs_margin_and_significance():
    promote, why = decide(0.05, 0.001, 0.01, 0.05)
    assert promote is True and "significantly" in why and "+0.0500" in why
    promote, why = decide(0.05, 0.2, 0.01, 0.05)
    assert promote is False and "not significant" in why and "p = 0.2 >= 0.05" in why
    assert decide(0.005, 0.001, 0.01, 0.05)[0] is False
    assert "below the margin" in decide(0.005, 0.001, 0.01, 0.05)[1]
    assert "not better" in decide(-0.02, 0.001, 0.0, 0.05)[1]
    assert "not better" in decide(0.0, 1.0, 0.0, 0.05)[1]


def test_the_retrain_summary_names_the_trained_version_by_where_its_alias_went():
    """A promoted version is not called "challenger" (the alias it would hold had it lost)."""
    from flows.ops_cli import retrain_summary

    def summary(champion, before, trained):
        return retrain_summary({"champion": champion, "decision": {"champion_before": before, "challenger": trained}})

    assert summary("3", "1", "3") == "champion: v3 (before: v1); v3 promoted"
    assert summary("1", None, "1") == "champion: v1 (before: none); v1 promoted"
    assert summary("1", "1", "2") == "champion: v1 (before: v1); challenger: v2 (alias challenger)"
    assert summary("1", "1", None) == "champion: v1 (before: v1); no new version"


def test_a_due_retrain_that_would_reproduce_the_champion_trains_with_a_new_seed():
    others = [
        _champion(1),
        Version("m", "4", None, datetime.now(timezone.utc), {"kdflow.seed": "7"}),
        Version("m", "5", None, datetime.now(timezone.utc), {"kdflow.seed": "not a number"}),
    ]
    # one above every seed a version was trained with, or the configured one
    assert fresh_seed(["forced"], True, 0, others) == 8
    assert fresh_seed(["forced"], True, 20, others) == 21
    aged = retrain_reasons(_champion(45), "d" * 64, 30, False)
    assert fresh_seed(aged, True, 0, []) == 1
    # nothing due, or the pipeline trains something new anyway (data, config or code changed,
    # no champion yet): the configured seed stays
    assert fresh_seed([], True, 0, others) is None
    assert fresh_seed(["forced"], False, 0, others) is None


@pytest.fixture(scope="module")
def registry(prefect_server, tmp_path_factory):
    """A SQLite registry with three versions of one student: weak (random weights, the champion,
    no export: loaded through the MLflow pytorch flavour), strong (trained; with a TorchScript
    export) and weak2 (random, another seed)."""
    from kdcore.data import load_dataset
    from kdcore.export import export_torchscript
    from kdcore.stages import train_teacher
    from kdcore.stages.env import StageEnv
    from tasks.tracking import Tracker

    home = tmp_path_factory.mktemp("registry-home")
    raw = copy.deepcopy(TINY)
    raw["teacher"] = {"arch": "cnn_tiny", "train": {"max_epochs": 2, "batch_size": 64, "lr": 0.05}}
    cfg = config_from_dict(raw)
    data = load_dataset(cfg.data)
    env = StageEnv(cfg, data, home / "work")
    models = {
        "weak": env.build("cnn_tiny", {}, 11),
        "strong": train_teacher(env).model,
        "weak2": env.build("cnn_tiny", {}, 12),
    }
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home)
    exp = tracker.experiment_id("tiny")
    versions, correct = {}, {}
    for label, model in models.items():
        model = model.cpu().eval()
        run_id = tracker.start_run(exp, f"distill-{label}")
        tracker.log_metrics(run_id, {"final_val_top1": 0.5})
        uri = tracker.log_torch_model(run_id, model, data.test.x[:2])
        tags = {"kdflow.data_fingerprint": data.fingerprint, "kdflow.fingerprint": label}
        if label == "strong":
            out = export_torchscript(model, data.test.x[:64], home / "export" / "student.torchscript.pt", 1e-4)
            tracker.log_artifact(run_id, out.path, "export")
            tags["kdflow.export_uri"] = f"runs:/{run_id}/export/student.torchscript.pt"
        versions[label], _ = tracker.register(uri, "tiny-student", tags)
        tracker.end_run(run_id)
        correct[label] = per_sample_correct(predict(model, data.test.x), data.test.y).tolist()
    tracker.set_alias("tiny-student", CHAMPION, versions["weak"])
    ctx = {"home": str(home), "tracking_uri": tracker.uri, "experiment_id": exp, "parent_run_id": None}
    return tracker, cfg, ctx, versions, correct


def _compare_and_apply(registry, champion_label: str, challenger_label: str) -> Decision:
    from tasks.promotion import apply_decision, compare_task

    tracker, cfg, ctx, versions, correct = registry
    champ = tracker.get_version("tiny-student", versions[champion_label])
    chall = tracker.get_version("tiny-student", versions[challenger_label])
    comparison = compare_task(
        cfg.model_dump(mode="json"), ctx, champ.as_dict(), chall.as_dict(), correct[challenger_label]
    )
    promote, why = decide(comparison["delta_top1"], comparison["mcnemar"]["p_value"], 0.01, 0.05)
    decision = Decision(
        "promote" if promote else "keep",
        why,
        champ.version,
        chall.version,
        comparison["delta_top1"],
        comparison["mcnemar"]["p_value"],
    )
    apply_decision(tracker, "tiny-student", decision, "flow-run-id")
    return decision, comparison


def test_significantly_better_challenger_becomes_champion(registry):
    tracker, _, _, versions, correct = registry
    decision, comparison = _compare_and_apply(registry, "weak", "strong")
    table = {row["role"]: row for row in comparison["table"]}
    assert table["champion"]["version"] == versions["weak"] and table["challenger"]["version"] == versions["strong"]
    assert table["challenger"]["heldout_top1"] == pytest.approx(np.mean(correct["strong"]))
    # the champion was evaluated again, from the registry
    assert table["champion"]["heldout_top1"] == pytest.approx(np.mean(correct["weak"]))
    assert table["champion"]["final_val_top1"] == 0.5  # pulled from the version's run
    assert decision.action == "promote" and comparison["mcnemar"]["p_value"] < 1e-6
    client = tracker.client
    assert str(client.get_model_version_by_alias("tiny-student", CHAMPION).version) == versions["strong"]
    tags = client.get_model_version("tiny-student", versions["strong"]).tags
    assert tags["kdflow.retrain.decision"] == "promote" and tags["kdflow.retrain.compared_with"] == versions["weak"]
    assert "kdflow.promoted_at" in tags


def test_worse_challenger_gets_the_challenger_alias_only(registry):
    tracker, _, _, versions, _ = registry
    tracker.set_alias("tiny-student", CHAMPION, versions["strong"])
    decision, _ = _compare_and_apply(registry, "strong", "weak2")
    assert decision.action == "keep" and "not better" in decision.reason
    client = tracker.client
    assert str(client.get_model_version_by_alias("tiny-student", CHAMPION).version) == versions["strong"]
    assert str(client.get_model_version_by_alias("tiny-student", CHALLENGER).version) == versions["weak2"]
    assert client.get_model_version("tiny-student", versions["weak2"]).tags["kdflow.retrain.decision"] == "keep"


def test_a_failed_retrain_moves_no_alias(prefect_server, tmp_path, monkeypatch):
    """The pipeline fails inside its first stage (a corrupt teacher checkpoint): the flow fails, the
    champion stays, no challenger alias appears, the retrain run is marked FAILED."""
    from flows.params import run_locally
    from flows.retrain import retrain_flow
    from tasks.tracking import Tracker

    home = tmp_path / "home"
    monkeypatch.setenv("KDFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home)
    exp = tracker.experiment_id("tiny")
    run_id = tracker.start_run(exp, "distill")
    uri = tracker.log_torch_model(run_id, torch.nn.Linear(64, 10), torch.zeros(2, 64))
    version, _ = tracker.register(uri, "tiny-student", {"kdflow.data_fingerprint": "old"})
    tracker.set_alias("tiny-student", CHAMPION, version)
    bad = tmp_path / "teacher.safetensors"
    bad.write_bytes(b"not a checkpoint")
    (tmp_path / "teacher.safetensors.json").write_text(
        '{"spec": {"arch": "cnn_small", "in_channels": 1, "num_classes": 10, "kwargs": {}}}'
    )
    raw = copy.deepcopy(TINY)
    raw["teacher"]["checkpoint"] = str(bad)
    with pytest.raises(CheckpointError, match="corrupted or not a safetensors file"):
        run_locally(retrain_flow, home, config=raw, force=True, home=str(home))
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("tiny-student", CHAMPION).version) == version
    assert [str(v.version) for v in client.search_model_versions("name='tiny-student'")] == [version]
    assert tracker.version_by_alias("tiny-student", CHALLENGER) is None
    retrain = client.search_runs([exp], filter_string="attributes.run_name = 'retrain'")
    assert len(retrain) == 1 and retrain[0].info.status == "FAILED"


def test_a_forced_retrain_on_unchanged_data_and_config_trains_afresh(prefect_server, tmp_path, monkeypatch):
    """`kdflow retrain --force` on the champion's own data and config: not "unchanged" (every stage
    cached, the champion reproduced) but a fresh training with a new seed, recorded, whose student
    is a new challenger version compared with the champion."""
    from flows.params import run_locally
    from flows.retrain import retrain_flow
    from flows.runner import run_pipeline
    from tasks.tracking import Tracker

    home = tmp_path / "home"
    monkeypatch.setenv("KDFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config_from_dict(copy.deepcopy(TINY))
    first = run_pipeline(cfg)
    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}", home)
    champion = tracker.version_by_alias("tiny-student", CHAMPION)  # set by the first registration itself
    assert champion is not None and champion.version == first["registered"]["tiny-student"] == "1"
    assert champion.tags["kdflow.seed"] == "0"

    result = run_locally(retrain_flow, home, config=copy.deepcopy(TINY), force=True, home=str(home))
    decision = result["decision"]
    assert decision["action"] in ("promote", "keep"), decision  # compared, not "unchanged"
    assert decision["seed"] == 1 and decision["challenger"] == "2" and decision["champion_before"] == "1"
    assert (
        "fresh training with trainer.seed 1 (configured 0; the data and config are the champion's)"
        in decision["reason"]
    )
    stages = result["pipeline"]["stages"]
    trained = {s for s in ("teacher", "pretrain", "distill", "baseline") if not stages[s]["cached"]}
    assert trained == {"teacher", "pretrain", "distill", "baseline"}, stages
    assert stages["teacher"]["mlflow_run_id"] != first["stages"]["teacher"]["mlflow_run_id"]
    assert stages["distill"]["mlflow_run_id"] != first["stages"]["distill"]["mlflow_run_id"]
    challenger = tracker.get_version("tiny-student", "2")
    assert challenger.tags["kdflow.seed"] == "1" and challenger.tags["kdflow.retrain.seed"] == "1"
    assert challenger.tags["kdflow.retrain.decision"] == decision["action"]
    assert challenger.tags["kdflow.weights_sha256"] != champion.tags["kdflow.weights_sha256"]
    retrain = tracker.client.get_run(result["mlflow_run_id"])
    assert retrain.data.params["trainer_seed"] == "1" and retrain.data.tags["kdflow.retrain.seed"] == "1"
    assert retrain.info.status == "FINISHED"
    # the alias follows the decision
    after = tracker.version_by_alias("tiny-student", CHAMPION).version
    assert after == ("2" if decision["action"] == "promote" else "1")
    # forced with a changed student config: those stages rerun anyway, the seed stays, the teacher is reused
    changed = run_locally(
        retrain_flow, home, config=copy.deepcopy(TINY), overrides=["distill.temperature=2"], force=True, home=str(home)
    )
    assert changed["decision"]["seed"] is None and changed["decision"]["challenger"] == "3"
    assert changed["pipeline"]["stages"]["teacher"]["cached"] and not changed["pipeline"]["stages"]["distill"]["cached"]
