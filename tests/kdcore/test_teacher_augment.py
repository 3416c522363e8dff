"""teacher.augment: the teacher trains in memory on a fresh seeded view of every image each epoch;
the same seed gives the same weights; the setting keys the teacher stage only when set; streamed
images refuse it before any work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_config
from kdcore.config import config_from_dict
from kdcore.data import load_dataset
from kdcore.errors import ConfigError
from kdcore.stages import StageEnv, train_teacher
from tasks.fingerprints import fingerprint

_BUILD = StageEnv.build


class _Recorder(nn.Module):
    """Wraps the teacher and keeps every training batch it is given."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(x.detach().clone())
        return self.inner(x)


def _cfg(policy: str, **extra):
    return tiny_config(
        data={"name": "digits", "limit_train": 256},
        teacher={
            "arch": "cnn_tiny",
            "train": {"max_epochs": 2, "batch_size": 256},
            "augment": {"policy": policy, **extra},
        },
    )


def _train(cfg, tmp_path, name, monkeypatch) -> tuple[_Recorder, dict[str, torch.Tensor]]:
    built: list[_Recorder] = []

    def build(self, arch, kwargs, seed_offset):
        built.append(_Recorder(_BUILD(self, arch, kwargs, seed_offset)))
        return built[-1]

    monkeypatch.setattr(StageEnv, "build", build)
    data = load_dataset(cfg.data)
    result = train_teacher(StageEnv(cfg, data, tmp_path / name))
    return built[0], {k: v.clone() for k, v in result.model.state_dict().items()}


def _sorted_rows(batch: torch.Tensor) -> torch.Tensor:
    """The epoch's images as a set: rows sorted, so epochs compare without knowing the sample order."""
    flat = batch.flatten(1).double()
    return flat[torch.argsort(flat @ torch.linspace(1.0, 2.0, flat.shape[1], dtype=torch.float64))]


@pytest.mark.parametrize("policy", ["shift", "crop_flip", "random_resized_crop"])
def test_the_teacher_sees_a_fresh_view_each_epoch_and_runs_repeat(tmp_path, monkeypatch, policy):
    cfg = _cfg(policy)
    rec, weights = _train(cfg, tmp_path, "a", monkeypatch)
    data = load_dataset(cfg.data)
    plain = data.train.x
    epoch0, epoch1 = rec.seen  # one batch of all 256 images per epoch
    assert epoch0.shape == plain.shape
    # augmented: not the plain images, and another view of them in the second epoch
    assert not torch.equal(_sorted_rows(epoch0), _sorted_rows(plain))
    assert not torch.equal(_sorted_rows(epoch0), _sorted_rows(epoch1))
    # the same seed: the same views, the same weights, bit for bit
    again, weights_again = _train(cfg, tmp_path, "b", monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(rec.seen, again.seen))
    assert all(torch.equal(weights[k], weights_again[k]) for k in weights)


def test_without_augment_the_teacher_sees_the_plain_images(tmp_path, monkeypatch):
    cfg = _cfg("none")
    rec, _ = _train(cfg, tmp_path, "a", monkeypatch)
    plain = load_dataset(cfg.data).train.x
    assert torch.equal(_sorted_rows(rec.seen[0]), _sorted_rows(plain))
    assert torch.equal(_sorted_rows(rec.seen[1]), _sorted_rows(plain))


def test_the_setting_keys_the_teacher_only_when_set():
    def teacher_fp(**augment):
        raw = {"data": {"name": "digits"}, "teacher": {"arch": "cnn_tiny"}}
        if augment:
            raw["teacher"]["augment"] = augment
        return fingerprint("teacher", config_from_dict(raw), "data", {})

    unset = teacher_fp()
    assert teacher_fp(policy="none") == unset  # teachers trained before the setting keep their key
    assert teacher_fp(policy="crop_flip") != unset
    assert teacher_fp(policy="crop_flip", pad=3) != teacher_fp(policy="crop_flip")


def test_bad_augment_settings_fail_clearly():
    with pytest.raises(ConfigError, match="teacher.augment.scale must satisfy"):
        config_from_dict({"teacher": {"augment": {"policy": "random_resized_crop", "scale": [0.9, 0.2]}}})
    with pytest.raises(ConfigError, match="teacher.augment.policy"):
        config_from_dict({"teacher": {"augment": {"policy": "rotate"}}})


def test_streamed_images_refuse_it_before_any_work(tmp_path):
    from images import write_image_folder

    from kdcore.preflight import preflight_data

    folder = write_image_folder(tmp_path / "imgs")
    cfg = tiny_config(
        data={"name": "imagefolder", "root": str(folder), "image_size": 16, "in_memory": False, "num_workers": 0},
        teacher={"augment": {"policy": "crop_flip"}},
    )
    data = load_dataset(cfg.data)
    with pytest.raises(ConfigError, match="teacher.augment applies to images held in memory"):
        preflight_data(cfg, data)
    with pytest.raises(ConfigError, match="teacher.augment applies to images held in memory"):
        train_teacher(StageEnv(cfg, data, tmp_path / "work"))
    assert not (tmp_path / "work" / "teacher.safetensors").exists()
