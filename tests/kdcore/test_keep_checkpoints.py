"""trainer.keep_checkpoints: a training stage keeps its last N epochs' checkpoints (1 by default),
an earlier epoch's weights load as a teacher checkpoint, and the setting keys no stage."""

from __future__ import annotations

import torch

from conftest import tiny_config
from kdcore.data import load_dataset
from kdcore.stages import StageEnv, distill_student, pretrain_student, train_teacher
from kdcore.stages.distill import TeacherSource
from kdcore.train.checkpoint import load_teacher, read_tensors
from tasks.fingerprints import fingerprint


def _cfg(keep: int | None):
    trainer = {} if keep is None else {"keep_checkpoints": keep}
    return tiny_config(
        data={"name": "digits", "limit_train": 256},
        teacher={"arch": "cnn_tiny", "train": {"max_epochs": 3, "batch_size": 128}},
        distill={"train": {"max_epochs": 3, "batch_size": 128}},
        trainer=trainer,
    )


def _epochs(folder) -> list[str]:
    return sorted(p.name for p in (folder / "checkpoints").glob("epoch-*"))


def test_the_default_keeps_the_latest_epoch_only(tmp_path):
    cfg = _cfg(None)
    assert cfg.trainer.keep_checkpoints == 1
    train_teacher(StageEnv(cfg, load_dataset(cfg.data), tmp_path / "t"))
    assert _epochs(tmp_path / "t") == ["epoch-0002"]


def test_every_epoch_kept_and_an_earlier_one_teaches(tmp_path):
    cfg = _cfg(3)
    data = load_dataset(cfg.data)
    result = train_teacher(StageEnv(cfg, data, tmp_path / "t"))
    assert _epochs(tmp_path / "t") == ["epoch-0000", "epoch-0001", "epoch-0002"]
    kept = [read_tensors(tmp_path / "t" / "checkpoints" / e / "model.safetensors") for e in _epochs(tmp_path / "t")]
    assert not torch.equal(kept[0]["fc.weight"], kept[2]["fc.weight"])  # three epochs, three sets of weights
    # the stage ends with its best epoch's weights: that epoch's kept checkpoint holds them
    best = kept[result.fit.best_epoch]
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, best[k]), k
    # an earlier epoch, given as teacher.checkpoint (a plain state_dict file), teaches a student
    path = tmp_path / "t" / "checkpoints" / "epoch-0000" / "model.safetensors"
    teacher = load_teacher(path, "cnn_tiny", {}, data.input_shape[0], data.num_classes)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, kept[0][k]), k
    env = StageEnv(cfg, data, tmp_path / "d")
    init = pretrain_student(StageEnv(cfg, data, tmp_path / "p"), None, None).path
    student = distill_student(env, init, TeacherSource(env, None, teacher, []))
    assert student.path.is_file()
    assert _epochs(tmp_path / "d") == ["epoch-0000", "epoch-0001", "epoch-0002"]  # the distill stage keeps 3 too


def test_keep_checkpoints_keys_no_stage():
    ups = {name: {"fingerprint": name[0]} for name in ("teacher", "features", "pretrain", "distill", "evaluate")}
    for stage in ("teacher", "features", "pretrain", "distill", "baseline"):
        assert fingerprint(stage, _cfg(None), "d", ups) == fingerprint(stage, _cfg(20), "d", ups), stage
