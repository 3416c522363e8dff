"""The three sequence configs end to end under Prefect's test server, on a reduced size, and the
registered students classifying raw strings and frames with the vocabulary or frame spec stored in
their MLflow models."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from conftest import kdflow_home
from kdcore.config import load_config
from kdcore.data import DATASETS, load_dataset, make_splits
from kdcore.speech import FrameSpec, classify_frames, frame_logits
from kdcore.text import Vocabulary, classify_texts, text_logits
from kdcore.train.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"teacher", "features", "pretrain", "distill", "baseline", "evaluate", "register", "export"}
SMALL = [
    "teacher.train.max_epochs=1",
    "distill.train.max_epochs=1",
    "evaluate.latency=false",
    "teacher.kwargs.num_layers=1",
    "teacher.kwargs.hidden_size=16",
    "teacher.kwargs.embed_dim=16",
    "student.kwargs.hidden_size=4",
    "student.kwargs.embed_dim=4",
]
CONFIGS = {
    "speech_vowels": ["data.limit_test=60"],
    "text_rotten_tomatoes": ["data.limit_train=200", "data.limit_test=60", "data.options.max_len=16"],
    "text_chinese": ["data.limit_train=200", "data.limit_test=60", "data.options.max_len=16"],
}
RAW = [
    "A gorgeous, funny and moving film.",
    "Dull, tedious and far too long.",
    "",
    "zzzz qqqq",
    "这本书写得非常好，推荐！",
    "质量太差了，很失望",
]


@pytest.fixture(scope="module")
def runs(prefect_server, tmp_path_factory):
    from flows.runner import run_pipeline

    home = tmp_path_factory.mktemp("sequence-home")
    with kdflow_home(home):
        out = {}
        for name, overrides in CONFIGS.items():
            cfg = load_config(ROOT / "configs" / f"{name}.yaml", SMALL + overrides)
            out[name] = (cfg, run_pipeline(cfg))
    return home, out


def client(home: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{home / 'mlflow.db'}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_runs_every_stage_and_registers_both_models(runs, name):
    home, out = runs
    cfg, report = out[name]
    assert set(report["stages"]) == STAGES and not any(s["cached"] for s in report["stages"].values())
    c = client(home)
    parent = c.get_run(report["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.info.run_name for r in children} == STAGES
    assert all(r.info.status == "FINISHED" for r in children)
    assert set(report["registered"]) == {cfg.register.teacher_name, cfg.register.student_name}
    models = report["models"]
    for m in ("teacher", "baseline", "student"):
        assert 0.0 <= models[m]["top1"] <= 1.0 and models[m]["params"] > 0 and models[m]["flops"] > 0
    assert models["teacher"]["params"] > models["student"]["params"]
    sidecar = json.loads((weights(home, report, "distill").with_name("student.safetensors.json")).read_text())
    assert sidecar["modality"] == ("speech" if name.startswith("speech") else "text")
    assert sidecar["files"] == (["frames.json"] if name.startswith("speech") else ["vocab.json"])


def weights(home: Path, report: dict, stage: str) -> Path:
    """The weights a stage wrote (its work directory is named by its fingerprint)."""
    name = "teacher.safetensors" if stage == "teacher" else "student.safetensors"
    return home / "runs" / stage / report["stages"][stage]["fingerprint"][:16] / name


def download_registered(home: Path, name: str, version: str, dst: Path) -> Path:
    from tasks.tracking import process_uri

    with process_uri(f"sqlite:///{home / 'mlflow.db'}"):  # models:/ URIs resolve through the process-wide URI
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))


@pytest.mark.parametrize("name", ["text_rotten_tomatoes", "text_chinese"])
def test_registered_student_classifies_raw_strings_with_its_stored_vocabulary(runs, name, tmp_path):
    home, out = runs
    cfg, report = out[name]
    student_name = cfg.register.student_name
    local = download_registered(home, student_name, report["registered"][student_name], tmp_path)
    vocab = Vocabulary.load(local / "extra_files" / "vocab.json")
    registered = mlflow.pytorch.load_model(str(local))

    # the stored vocabulary encodes the raw test texts exactly as the pipeline's data did
    data = load_dataset(cfg.data)
    raw = DATASETS.get(cfg.data.name)(cfg.data)
    idx = make_splits(cfg.data.name, raw.train_y, None, cfg.data)
    test_texts = list(raw.train_x[idx.test])
    assert vocab.to_dict() == data.extras["vocab"].to_dict()
    assert torch.equal(vocab.encode(test_texts), data.test.x)

    # kdcore's own prediction: the distilled weights on disk with the vocabulary built from the data
    ours = load_model(weights(home, report, "distill"))
    texts = RAW + test_texts[:20]
    expected = text_logits(ours, data.extras["vocab"], texts)
    got = text_logits(registered, vocab, texts)
    assert torch.allclose(got, expected, atol=1e-5)
    labels = classify_texts(registered, vocab, texts)
    assert labels == [vocab.class_names[i] for i in expected.argmax(1).tolist()]
    assert set(labels) <= set(data.class_names)
    # one string at a time gives the same answers (padding never changes a prediction)
    assert [classify_texts(registered, vocab, [t])[0] for t in texts[:6]] == labels[:6]


def test_registered_speech_student_matches_kdcore_weights(runs, tmp_path):
    home, out = runs
    cfg, report = out["speech_vowels"]
    name = cfg.register.student_name
    local = download_registered(home, name, report["registered"][name], tmp_path)
    registered = mlflow.pytorch.load_model(str(local))
    data = load_dataset(cfg.data)
    ours = load_model(weights(home, report, "distill")).eval()
    with torch.no_grad():
        assert torch.allclose(registered(data.test.x[:7]), ours(data.test.x[:7]), atol=1e-5)
        expected = ours(data.test.x)
    # the stored frame spec turns the loader's raw frames into the inputs the pipeline trained on,
    # and the registered model classifies them with it
    spec = FrameSpec.load(local / "extra_files" / "frames.json")
    assert spec.to_dict() == data.extras["frames"].to_dict() and spec.class_names == data.class_names
    raw = DATASETS.get(cfg.data.name)(cfg.data)
    idx = make_splits(cfg.data.name, raw.train_y, len(raw.test_y) if raw.has_test else None, cfg.data)
    frames = list((raw.test_x if idx.test_is_official else raw.train_x)[idx.test])
    assert torch.equal(spec.encode(frames), data.test.x)
    assert torch.allclose(frame_logits(registered, spec, frames), expected, atol=1e-5)
    assert classify_frames(registered, spec, frames) == [spec.class_names[i] for i in expected.argmax(1).tolist()]
