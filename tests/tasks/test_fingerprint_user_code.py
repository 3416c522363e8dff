"""A stage's fingerprint follows the user's own files: a weights file by content, a ``python:``
factory and the ``imports:`` plugins by their source."""

from __future__ import annotations

import sys

import torch

from conftest import TINY
from kdcore.config import config_from_dict
from tasks.fingerprints import fingerprint


def _fp(stage: str, raw: dict) -> str:
    inputs = {"teacher": {"fingerprint": "t"}, "features": {"fingerprint": "f"}, "pretrain": {"fingerprint": "p"}}
    return fingerprint(stage, config_from_dict(raw), "data", inputs)


def test_teacher_weights_file_counts_by_content(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(2)}, weights)
    raw = {**TINY, "teacher": {"arch": "cnn_small", "kwargs": {"weights": str(weights)}}}
    first = _fp("teacher", raw)
    assert _fp("teacher", raw) == first
    torch.save({"a": torch.ones(2)}, weights)  # same path, other weights
    assert _fp("teacher", raw) != first


def test_python_factory_and_plugins_count_by_source(tmp_path, monkeypatch):
    pkg = tmp_path / "fp_user_models.py"
    pkg.write_text("def make(in_channels, num_classes):\n    raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {**TINY, "student": {"arch": "python:fp_user_models:make"}, "imports": ["fp_user_models"]}
    before = {s: _fp(s, raw) for s in ("teacher", "pretrain", "distill", "baseline")}
    pkg.write_text("def make(in_channels, num_classes):\n    raise RuntimeError('changed')\n")
    sys.modules.pop("fp_user_models", None)
    after = {s: _fp(s, raw) for s in before}
    assert all(after[s] != before[s] for s in before), (before, after)
    # configs without user code keep their fingerprints: no 'imports' key is added to them
    assert _fp("distill", TINY) == _fp("distill", {**TINY, "imports": []})
