"""configs/methods/*.yaml, early errors on layer pairs, every term of a combined objective logged,
and one method config run end to end by `kdflow run`'s code path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import kdflow_home, tiny_config
from kdcore.config import config_from_dict, load_config
from kdcore.data import load_dataset
from kdcore.errors import ConfigError
from kdcore.losses import build_objective
from kdcore.models import create_model
from kdcore.preflight import preflight, preflight_with_data
from kdcore.stages import StageEnv, TeacherSource, distill_student, pretrain_student

METHOD_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "methods").glob("*.yaml"))
MNIST = ((1, 28, 28), 10)


def test_one_config_per_method():
    names = {p.stem for p in METHOD_CONFIGS}
    assert {"kd", "dkd", "dist", "ttm", "fitnet", "at", "pkt", "rkd", "sp", "crd", "teacher_layers"} <= names


@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=lambda p: p.stem)
def test_method_configs_pass_both_preflights(path):
    cfg = load_config(path)
    preflight(cfg)
    preflight_with_data(cfg, *MNIST)  # every layer pair built on the probed shapes


def test_bench_recipes_variants_pass_preflight_with_their_teachers():
    """bench/recipes.py's variants are valid pipeline configs whose layer pairs fit the resnet14
    teacher (or the cnn_medium one of the tl_* variants) and the 9k cnn student on 28-px images."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[2] / "bench" / "recipes.py"
    spec = importlib.util.spec_from_file_location("bench_recipes", path)
    assert spec is not None and spec.loader is not None
    recipes = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(recipes)  # it puts the repository and bench/ on sys.path
    finally:
        sys.path[:] = saved
    paired = 0
    for name in recipes.VARIANTS:
        arch = "cnn_medium" if name in recipes.PRETRAIN else "resnet14"
        raw = recipes.variant_config(name, Path("unused"), 2, 0, arch)
        del raw["teacher"]["checkpoint"]  # not trained here: only its architecture is checked
        cfg = config_from_dict(raw)
        preflight(cfg)
        preflight_with_data(cfg, *MNIST)
        paired += bool(build_objective(cfg.distill.objective_spec()).teacher_paths)
    assert paired >= 2  # the kd_t2_at_* variants distil the teacher's feature maps
    raw = recipes.variant_config("kd_t2_at_lr05", Path("unused"), 2)
    del raw["teacher"]["checkpoint"]
    raw["distill"]["losses"]["at"]["pairs"] = [{"student": "block1", "teacher": "layer9"}]
    with pytest.raises(ConfigError, match="layer9"):
        preflight(config_from_dict(raw))


def test_pair_problems_fail_before_any_work_naming_pair_and_shapes():
    cfg = load_config(
        METHOD_CONFIGS[0].parent / "at.yaml", ["distill.losses.at.pairs=[{student: flatten, teacher: block2}]"]
    )
    with pytest.raises(ConfigError) as err:
        preflight_with_data(cfg, *MNIST)
    msg = str(err.value)
    assert "distill.losses" in msg and "'flatten'" in msg and "'block2'" in msg and "(16,)" in msg
    assert "(64, 7, 7)" in msg
    cfg = load_config(
        METHOD_CONFIGS[0].parent / "fitnet.yaml",
        ["pretrain.pairs=[{student: block2, teacher: block3, connector: none}]"],
    )
    with pytest.raises(ConfigError) as err:
        preflight_with_data(cfg, *MNIST)
    msg = str(err.value)
    assert "pretrain.pairs" in msg and "(16, 7, 7)" in msg and "(128, 4, 4)" in msg and "connector" in msg


def test_combined_objective_logs_every_term(tmp_path):
    data = load_dataset(tiny_config(data={"limit_train": 256}).data)
    losses = {
        "ce": {"weight": 1.0},
        "dkd": {"weight": 0.5, "warmup": 2},
        "dist": {"weight": 1.0, "beta": 2.0},
        "logit_mse": {"weight": 0.1, "center": True},
        "ttm": {"weight": 0.5, "weighted": True},
        "at": {"weight": 1.0, "pairs": [{"student": "block1", "teacher": "block2"}]},
        "sp": {"weight": 10.0, "pairs": [{"student": "block2", "teacher": "block3"}]},
        "pkt": {"weight": 1.0, "pairs": [{"student": "flatten", "teacher": "flatten"}]},
        "rkd": {"weight": 1.0, "pairs": [{"student": "flatten", "teacher": "flatten"}]},
        "crd": {"weight": 0.5, "student": "flatten", "teacher": "flatten", "num_negatives": 32, "feat_dim": 8},
        "fitnet": {"weight": 1.0, "pairs": [{"student": "block2", "teacher": "block2", "connector": "conv"}]},
    }
    cfg = tiny_config(
        data={"limit_train": 256}, distill={"losses": losses, "train": {"max_epochs": 1, "batch_size": 64}}
    )
    env = StageEnv(cfg, data, tmp_path)
    teacher = create_model("cnn_small", in_channels=1, num_classes=data.num_classes)
    init = pretrain_student(env, None, None).path
    from kdcore.losses import build_objective

    paths = build_objective(cfg.distill.objective_spec()).teacher_paths
    res = distill_student(StageEnv(cfg, data, tmp_path / "distill"), init, TeacherSource(env, None, teacher, paths))
    logged = res.fit.history[0]
    terms = (
        "ce",
        "dkd_tckd",
        "dkd_nckd",
        "dist_inter",
        "dist_intra",
        "logit_mse",
        "ttm",
        "at",
        "sp",
        "pkt",
        "rkd_distance",
        "rkd_angle",
    )
    for term in (*terms, "crd", "fitnet"):
        assert f"train_{term}" in logged and torch.isfinite(torch.tensor(logged[f"train_{term}"]))
    assert res.info["weights"]["sp"] == 10.0


@pytest.fixture()
def isolated_home(tmp_path):
    (tmp_path / "home").mkdir()
    with kdflow_home(tmp_path / "home") as home:
        yield home


def test_teacher_layers_config_with_crd_and_dkd_runs_end_to_end(prefect_server, isolated_home):
    """configs/methods/teacher_layers.yaml through the pipeline, its distill step swapped for CE + DKD + CRD."""
    from mlflow import MlflowClient

    from flows.runner import run_pipeline

    overrides = [
        "data.name=digits",
        "data.limit_train=300",
        "teacher.arch=cnn_small",
        "teacher.train={max_epochs: 1, batch_size: 64}",
        "student.arch=cnn",
        "student.kwargs={channels: [8, 16]}",
        "pretrain.train={max_epochs: 1, batch_size: 64}",
        "distill.train={max_epochs: 1, batch_size: 64}",
        "distill.losses={ce: {weight: 1.0}, dkd: {weight: 1.0}, crd: {weight: 0.5, student: flatten, "
        "teacher: flatten, num_negatives: 64, feat_dim: 16, memory: bank}}",
        "evaluate.latency=false",
        "evaluate.min_run_time=0.01",
        "evaluate.throughput_batch=32",
    ]
    report = run_pipeline(METHOD_CONFIGS[0].parent / "teacher_layers.yaml", overrides, home=isolated_home)
    client = MlflowClient(f"sqlite:///{isolated_home / 'mlflow.db'}")
    pretrain = client.get_run(report["stages"]["pretrain"]["mlflow_run_id"])
    distill = client.get_run(report["stages"]["distill"]["mlflow_run_id"])
    assert "train_kd" in pretrain.data.metrics  # sliced layers trained on the teacher's (cached) logits
    for term in ("train_ce", "train_dkd_tckd", "train_dkd_nckd", "train_crd"):
        assert term in distill.data.metrics
    assert report["models"]["student"]["top1"] > 0.2
