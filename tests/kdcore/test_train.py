"""The training loop: resume equals an uninterrupted run, the criterion stops, NaN is caught."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcore.config import TrainSpec
from kdcore.errors import CheckpointError, DivergenceError
from kdcore.models import create_model
from kdcore.stages.env import classifier_val
from kdcore.train import TrainCallbacks, fit
from kdcore.train.checkpoint import latest_training_checkpoint, load_model, save_model


def _data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, :, :4].mean(dim=(1, 2, 3)) > 0).long()
    return x, y


def _train(ckpt, spec, callbacks=None, seed=0):
    torch.manual_seed(seed)
    model = create_model("cnn_tiny", in_channels=1, num_classes=4)
    x, y = _data()

    def step(idx):
        return F.cross_entropy(model(x[idx]), y[idx]), {"ce": F.cross_entropy(model(x[idx]), y[idx])}

    res = fit(
        {"model": model},
        step,
        len(x),
        lambda: classifier_val(model, x[:64], y[:64]),
        spec,
        ckpt_dir=ckpt,
        seed=seed,
        callbacks=callbacks,
        run_key="k",
    )
    return model, res


class Crash(TrainCallbacks):
    def __init__(self, at: int):
        self.at = at

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.at:
            raise KeyboardInterrupt("simulated kill after the checkpoint of epoch %d" % epoch)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    spec = TrainSpec(max_epochs=4, batch_size=32, lr=0.05)
    full, full_res = _train(tmp_path / "a", spec)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "b", spec, Crash(at=1))
    assert latest_training_checkpoint(tmp_path / "b").name == "epoch-0001"
    resumed, res = _train(tmp_path / "b", spec)
    assert res.resumed_from == 2
    assert res.epochs_run == 4 and [h["train_loss"] for h in res.history] == [h["train_loss"] for h in full_res.history]
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_target_stops_training_and_says_why(tmp_path):
    _, res = _train(tmp_path, TrainSpec(max_epochs=10, target=0.0))
    assert res.epochs_run == 1
    assert "target" in res.stop_reason


def test_patience_stops_training_without_improvement(tmp_path):
    _, res = _train(tmp_path, TrainSpec(max_epochs=10, lr=1e-12, momentum=0.0, patience=2, min_delta=0.5))
    assert res.epochs_run == 3
    assert "no val_top1 improvement" in res.stop_reason


def test_max_epochs_reason(tmp_path):
    _, res = _train(tmp_path, TrainSpec(max_epochs=2))
    assert res.epochs_run == 2 and res.stop_reason == "max_epochs 2 reached"


def test_completed_run_is_not_retrained(tmp_path):
    spec = TrainSpec(max_epochs=2)
    _train(tmp_path, spec)
    _, res = _train(tmp_path, spec)
    assert res.resumed_from == 2 and res.epochs_run == 2


def test_nan_loss_stops_with_epoch_and_step(tmp_path):
    model = create_model("cnn_tiny", in_channels=1, num_classes=4)
    x, y = _data()
    calls = {"n": 0}

    def step(idx):
        calls["n"] += 1
        loss = F.cross_entropy(model(x[idx]), y[idx])
        return (loss * float("nan") if calls["n"] == 11 else loss), {}

    with pytest.raises(DivergenceError, match=r"loss became nan at epoch 2, step 3"):
        fit(
            {"model": model},
            step,
            len(x),
            lambda: classifier_val(model, x, y),
            TrainSpec(max_epochs=3, batch_size=32),
            ckpt_dir=tmp_path,
            run_key="k",
        )
    assert latest_training_checkpoint(tmp_path).name == "epoch-0000"


def test_model_round_trip_and_wrong_architecture(tmp_path):
    m = create_model("cnn_tiny", in_channels=1, num_classes=4)
    save_model(m, tmp_path / "m.safetensors")
    back = load_model(tmp_path / "m.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), back.state_dict().values()))
    other = create_model("cnn_small", in_channels=1, num_classes=4)
    from kdcore.train.checkpoint import load_into, read_tensors

    with pytest.raises(CheckpointError, match="does not fit architecture 'cnn_small'"):
        load_into(other, read_tensors(tmp_path / "m.safetensors"), "m")


def test_corrupted_checkpoint_is_reported(tmp_path):
    m = create_model("cnn_tiny", in_channels=1, num_classes=4)
    path = tmp_path / "m.safetensors"
    save_model(m, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(path)
