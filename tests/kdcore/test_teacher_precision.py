"""The teacher's outputs are exact float32 even when the student trains under autocast (issue 15,
defect 6): online (inside an autocast training step) and in the cache build (amp on)."""

from __future__ import annotations

import torch

from conftest import tiny_config
from kdcore.data import load_dataset
from kdcore.stages import StageEnv, TeacherSource, build_features


def test_online_and_cached_teacher_outputs_are_float32_under_autocast(tmp_path):
    cfg = tiny_config(data={"limit_train": 64})
    env = StageEnv(cfg, load_dataset(cfg.data), tmp_path / "work")
    env.amp_dtype = torch.bfloat16  # as on a GPU with amp auto; CPU autocast runs bf16 matmuls too
    teacher = env.build("cnn_small", {}, seed_offset=0).eval()
    x, _ = env.split("train")
    with torch.no_grad():
        exact = teacher(x).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not torch.equal(teacher(x).float(), exact)  # autocast does change the outputs

    source = TeacherSource(env, None, teacher, [])
    idx = torch.arange(len(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the training step's context
        online, _ = source.get("train", idx, torch.zeros_like(idx), x)
    assert torch.equal(online, exact)

    entries = build_features(env, teacher, "t" * 64, tmp_path / "cache")
    cached = entries["train"][0].read_all("logits")[:, 0]
    assert torch.equal(cached, exact)
