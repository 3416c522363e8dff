"""Dropout is reproducible when stages train side by side in threads (kdcore.train.rng): the
baseline trains beside the distillation branch, a sweep's trials beside each other, and all of
them draw masks from torch's one global generator."""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.config import TrainSpec
from kdcore.losses import build_objective
from kdcore.models import create_model
from kdcore.stages.env import classifier_val
from kdcore.train import fit
from kdcore.train.rng import GLOBAL_RNG, draws_randomness


def _train(seed: int, ckpt, hidden: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(240, 12, generator=g)
    y = (x[:, :3].sum(1) > 0).long()
    with GLOBAL_RNG:  # nn.Linear draws its initialisation from the global generator, as StageEnv.build does
        model = nn.Sequential(nn.Linear(12, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, 2))
    with torch.no_grad():  # then a fixed initialisation of its own
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def step(idx):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        return loss, {"ce": loss}

    spec = TrainSpec(max_epochs=4, batch_size=8, lr=0.05, scheduler="none")
    fit(
        {"model": model},
        step,
        len(x),
        lambda: classifier_val(model, x[:40], y[:40]),
        spec,
        ckpt_dir=ckpt,
        seed=seed,
        run_key="k",
    )
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_dropout_models_trained_in_parallel_threads_match_sequential_runs(tmp_path):
    alone = [_train(1, tmp_path / "a1", 32), _train(2, tmp_path / "a2", 48)]
    together: list = [None, None]

    def work(i, seed, hidden):
        together[i] = _train(seed, tmp_path / f"t{seed}", hidden)

    threads = [threading.Thread(target=work, args=(0, 1, 32)), threading.Thread(target=work, args=(1, 2, 48))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{k}: the masks depended on the other thread's draws"


def test_which_modules_draw_randomness():
    assert not draws_randomness([create_model("cnn_tiny", in_channels=1, num_classes=10)])
    assert draws_randomness([create_model("cnn", in_channels=1, num_classes=10, channels=[4, 8], dropout=0.2)])
    assert not draws_randomness([create_model("text_rnn", in_channels=50, num_classes=2)])
    assert draws_randomness([create_model("text_rnn", in_channels=50, num_classes=2, dropout=0.3)])
    assert draws_randomness([nn.GRU(4, 4, num_layers=2, dropout=0.1)])
    crd = build_objective({"crd": {"weight": 1.0, "student": "flatten", "teacher": "flatten"}})
    assert draws_randomness([crd])
