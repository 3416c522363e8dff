"""bf16 and channels-last on the CPU, asked for: `trainer.amp: bf16` trains under bfloat16 autocast
on the CPU (auto stays float32 there), `cache.precision: amp` builds the teacher cache under it,
keyed apart from the exact float32 entries, and `trainer.channels_last` trains NHWC models. The
speed is bench/cpu_bf16.py's (never asserted here)."""

from __future__ import annotations

import torch
from torch import nn

from conftest import tiny_config
from kdcore.config import config_from_dict
from kdcore.data import load_dataset
from kdcore.models import create_model
from kdcore.stages import StageEnv, build_features, train_teacher
from kdcore.train import autocast_dtype
from tasks.fingerprints import fingerprint

CPU = torch.device("cpu")


def test_the_cpu_runs_bf16_only_when_asked():
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert autocast_dtype(CPU, "auto") is None  # the default stays exact
    assert autocast_dtype(CPU, "off") is None
    assert autocast_dtype(CPU, "fp16") is None  # a GPU setting: full precision on the CPU


def test_a_bf16_teacher_trains_in_bf16_and_learns(tmp_path, monkeypatch):
    seen: list[torch.dtype] = []
    build = StageEnv.build

    def recording(self, arch, kwargs, seed_offset):
        model = build(self, arch, kwargs, seed_offset)
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        first.register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
        return model

    monkeypatch.setattr(StageEnv, "build", recording)
    cfg = tiny_config(trainer={"amp": "bf16", "device": "cpu"}, teacher={"arch": "cnn_tiny"})
    data = load_dataset(cfg.data)
    result = train_teacher(StageEnv(cfg, data, tmp_path / "t"))
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # the weights stay float32
    assert result.metrics["val_top1"] > 0.5  # ten digit classes: far above chance after two epochs


def test_an_amp_cache_is_close_to_the_exact_one_and_keyed_apart(tmp_path):
    exact_cfg = tiny_config(trainer={"amp": "bf16", "device": "cpu"}, data={"limit_train": 300})
    amp_cfg = tiny_config(
        trainer={"amp": "bf16", "device": "cpu"}, data={"limit_train": 300}, cache={"precision": "amp"}
    )
    data = load_dataset(exact_cfg.data)
    torch.manual_seed(0)
    teacher = create_model("cnn_small", in_channels=data.in_channels, num_classes=data.num_classes)
    cache = tmp_path / "cache"
    exact = build_features(StageEnv(exact_cfg, data, tmp_path / "a"), teacher, "sha", cache)
    rounded = build_features(StageEnv(amp_cfg, data, tmp_path / "b"), teacher, "sha", cache)
    assert rounded["train"][1], "built, not the float32 entry reused"
    assert exact["train"][0].key != rounded["train"][0].key
    a, b = exact["train"][0].read_all("logits"), rounded["train"][0].read_all("logits")
    assert not torch.equal(a, b)
    assert torch.allclose(a, b, rtol=0.05, atol=0.05 * float(a.abs().max()))
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.95
    again = build_features(StageEnv(amp_cfg, data, tmp_path / "c"), teacher, "sha", cache)
    assert not again["train"][1]  # found again


def test_the_setting_keys_the_features_stage_only_when_set():
    def features_fp(**cache):
        raw = {"data": {"name": "digits"}, "trainer": {"amp": "bf16"}, "cache": cache}
        return fingerprint("features", config_from_dict(raw), "data", {})

    assert features_fp(precision="float32") == features_fp()
    assert features_fp(precision="amp") != features_fp()


def test_channels_last_trains_nhwc_models_and_keys_only_when_set(tmp_path):
    cfg = tiny_config(trainer={"channels_last": True, "device": "cpu"}, teacher={"arch": "cnn_tiny"})
    data = load_dataset(cfg.data)
    result = train_teacher(StageEnv(cfg, data, tmp_path / "t"))
    convs = [m for m in result.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert result.metrics["val_top1"] > 0.5

    def teacher_fp(**trainer):
        raw = {"data": {"name": "digits"}, "trainer": trainer}
        return fingerprint("teacher", config_from_dict(raw), "data", {})

    assert teacher_fp(channels_last=False) == teacher_fp()  # homes from before the setting stay valid
    assert teacher_fp(channels_last=True) != teacher_fp()


def test_a_channels_last_teacher_builds_its_own_cache_entry(tmp_path):
    nchw = tiny_config(data={"limit_train": 200})
    nhwc = tiny_config(data={"limit_train": 200}, trainer={"channels_last": True})
    data = load_dataset(nchw.data)
    torch.manual_seed(0)
    teacher = create_model("cnn_small", in_channels=data.in_channels, num_classes=data.num_classes)
    a = build_features(StageEnv(nchw, data, tmp_path / "a"), teacher, "sha", tmp_path / "cache")
    b = build_features(StageEnv(nhwc, data, tmp_path / "b"), teacher, "sha", tmp_path / "cache")
    assert b["train"][1] and a["train"][0].key != b["train"][0].key  # built, not reused
    la, lb = a["train"][0].read_all("logits"), b["train"][0].read_all("logits")
    assert torch.allclose(la, lb, rtol=1e-4, atol=1e-4)  # the same function, rounded another way
