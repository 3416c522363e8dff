"""DistributedDataParallel on CPU (gloo, 2 processes): the same global batch gives the same training
as one process; a stage function runs in the ranks through run_distributed; errors come back."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY
from kdcore.config import TrainSpec, config_from_dict
from kdcore.errors import ConfigError, DivergenceError
from kdcore.hooks import FeatureTap
from kdcore.train import TrainCallbacks, ddp, fit


class Recorder(TrainCallbacks):
    def __init__(self) -> None:
        self.started: list[tuple[int, int]] = []
        self.epochs: list[tuple[int, dict]] = []

    def on_fit_start(self, start_epoch: int, max_epochs: int) -> None:
        self.started.append((start_epoch, max_epochs))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.append((epoch, metrics))


def train_mlp(workdir: str, callbacks: TrainCallbacks, lr: float = 0.2, hint: bool = False) -> dict:
    """A small MLP (no BatchNorm, so one process and two agree to float precision) on fixed data.

    ``hint``: the loss is taken from a hidden layer by a forward hook, as in hint training, and the
    last layer gets no gradient at all."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 10, generator=gen)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 1).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    seen: list[int] = []

    def step(idx: torch.Tensor):
        seen.append(len(idx))
        if hint:
            with FeatureTap(model, ["1"]) as tap:
                model(x[idx])
                loss = (tap.features["1"] - 0.5).pow(2).mean()
        else:
            loss = F.cross_entropy(model(x[idx]), y[idx])
        return loss, {"ce": loss}

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            logits = model(x)
        return {
            "val_loss": float(F.cross_entropy(logits, y)),
            "val_top1": float((logits.argmax(1) == y).float().mean()),
        }

    spec = TrainSpec(
        max_epochs=3,
        batch_size=40,
        optimizer="sgd",
        lr=lr,
        momentum=0.9,
        weight_decay=1e-4,
        scheduler="cosine",
        monitor="val_loss",
    )
    result = fit(
        {"model": model},
        step,
        len(x),
        evaluate,
        spec,
        ckpt_dir=Path(workdir) / "ckpt",
        seed=3,
        callbacks=callbacks,
        run_key=workdir,
        stage="mlp",
    )
    group = ddp.active()
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "history": result.history,
        "world_size": group.world_size if group else 1,
        "batch_sizes": seen,
    }


@pytest.fixture()
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank runs; and far faster than 2 threads on a busy 2-core machine
    yield
    torch.set_num_threads(before)


def test_two_gloo_processes_match_one_process(tmp_path, one_thread):
    single = train_mlp(str(tmp_path / "single"), Recorder())
    relayed = Recorder()
    double = ddp.run_distributed(train_mlp, str(tmp_path / "ddp"), relayed, world_size=2, device=torch.device("cpu"))
    assert double["world_size"] == 2 and single["world_size"] == 1
    # each rank took half of every global batch of 40 (200 samples, 5 batches, 3 epochs)
    assert double["batch_sizes"] == [20] * 15 and single["batch_sizes"] == [40] * 15
    for name, value in single["state"].items():
        assert torch.allclose(value, double["state"][name], atol=1e-5), name
    assert any(
        not torch.allclose(v, train_mlp(str(tmp_path / "other"), Recorder(), lr=0.05)["state"][k], atol=1e-3)
        for k, v in single["state"].items()
    ), "a different run must be distinguishable"
    for a, b in zip(single["history"], double["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)  # summed over both ranks
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    # rank 0's callbacks were replayed in this process
    assert relayed.started == [(0, 3)]
    assert [e for e, _ in relayed.epochs] == [0, 1, 2]
    assert relayed.epochs[-1][1]["val_loss"] == pytest.approx(double["history"][-1]["val_loss"])
    assert (tmp_path / "ddp" / "ckpt" / "best" / "model.safetensors").is_file()


def test_gradients_are_averaged_when_the_loss_comes_from_a_hooked_layer(tmp_path, one_thread):
    single = train_mlp(str(tmp_path / "single"), Recorder(), hint=True)
    double = ddp.run_distributed(
        train_mlp, str(tmp_path / "ddp"), Recorder(), hint=True, world_size=2, device=torch.device("cpu")
    )
    assert double["batch_sizes"] == [20] * 15
    for name, value in single["state"].items():
        assert torch.allclose(value, double["state"][name], atol=1e-6), name


def diverge(workdir: str) -> None:
    def step(idx):
        return torch.tensor(float("nan"), requires_grad=True), {}

    model = nn.Linear(2, 2)
    fit(
        {"model": model},
        step,
        8,
        lambda: {"val_top1": 0.0},
        TrainSpec(max_epochs=1, batch_size=4),
        ckpt_dir=Path(workdir),
        stage="boom",
    )


def test_an_error_in_a_rank_is_raised_in_the_caller(tmp_path):
    with pytest.raises(DivergenceError, match="boom: loss became nan"):
        ddp.run_distributed(diverge, str(tmp_path), world_size=2, device=torch.device("cpu"))


def test_teacher_stage_with_two_processes_matches_one(tmp_path, one_thread):
    """The teacher stage of the digits pipeline, as trainer.devices=2 runs it (BatchNorm statistics
    are per rank on CPU, so the match is close rather than exact)."""
    from kdcore.data import load_dataset
    from kdcore.stages import train_teacher
    from kdcore.stages.env import StageEnv

    raw = copy.deepcopy(TINY)
    raw["teacher"] = {"arch": "cnn_tiny", "train": {"max_epochs": 2, "batch_size": 64, "lr": 0.05}}
    cfg = config_from_dict(raw)
    data = load_dataset(cfg.data)
    one = train_teacher(StageEnv(cfg, data, tmp_path / "one"))
    cfg2 = config_from_dict(raw, ["trainer.devices=2"])
    relayed = Recorder()
    two = ddp.run_distributed(
        train_teacher, StageEnv(cfg2, data, tmp_path / "two", relayed), world_size=2, device=torch.device("cpu")
    )
    assert two.path == tmp_path / "two" / "teacher.safetensors" and two.path.is_file()
    assert [e for e, _ in relayed.epochs] == [0, 1]
    assert two.metrics["val_top1"] > 0.5, two.metrics
    assert abs(two.metrics["val_top1"] - one.metrics["val_top1"]) < 0.1, (one.metrics, two.metrics)
    assert abs(two.info["last_val_loss"] - one.info["last_val_loss"]) < 0.25


def fake_gpus(monkeypatch, count: int) -> dict:
    current = {"device": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["device"])
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: current.__setitem__("device", i))
    return current


def test_concurrent_stages_take_the_least_busy_gpu(monkeypatch, tmp_path):
    """Two GPUs visible (simulated): stages running at once get different devices, per thread."""
    current = fake_gpus(monkeypatch, 2)
    locks = tmp_path / "locks"
    with ddp.device_slot("auto", lock_dir=locks) as first:
        assert first == 0 and current["device"] == 0
        with ddp.device_slot("cuda", lock_dir=locks) as second:
            assert second == 1 and current["device"] == 1
            with ddp.device_slot("cuda", lock_dir=locks) as third:
                assert third == 0, "both busy: the lowest index is shared"
        assert current["device"] == 0
        with ddp.device_slot("cuda:0", lock_dir=locks) as explicit:
            assert explicit is None  # an explicit index is honoured as written
    with ddp.device_slot("auto", lock_dir=locks) as again:
        assert again == 0
    with ddp.device_slot("auto", count=2, lock_dir=locks) as ddp_first:
        assert ddp_first == 0 and ddp.current_devices() == [0, 1], "a DDP stage takes one device per rank"
        with ddp.device_slot("auto", lock_dir=locks) as other:
            assert other == 0
    assert ddp.current_devices() is None
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="only 1 CUDA device"):
        ddp.backend_for(torch.device("cuda"), 2)
    assert ddp.backend_for(torch.device("cpu"), 2) == "gloo"


HOLDER = """
import sys, time, torch
from kdcore.train import ddp
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
torch.cuda.current_device = lambda: 0
torch.cuda.set_device = lambda i: None
with ddp.device_slot("auto", lock_dir=sys.argv[1]) as index:
    print(index, ddp.visible_device_ids(2)[index], flush=True)
    sys.stdin.readline()  # hold the device until told
"""


def test_device_slots_hold_across_processes(tmp_path):
    """Flow runs in separate processes (two workers, fake 2-GPU machines) spread over the GPUs and
    release a device when they end; devices are told apart by their physical id."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    locks = str(tmp_path / "locks")
    procs = []

    def start(visible: str) -> tuple[int, str]:
        env = {**os.environ, "PYTHONPATH": str(root), "CUDA_VISIBLE_DEVICES": visible}
        p = subprocess.Popen(
            [sys.executable, "-c", HOLDER, locks],
            env=env,
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        index, physical = p.stdout.readline().split()
        return int(index), physical

    try:
        assert start("0,1") == (0, "0")
        assert start("0,1") == (1, "1"), "the second process takes the other GPU"
        assert start("0,1") == (0, "0"), "all busy: shared, lowest first"
        procs[0].stdin.close()  # the first run ends: its device is free again
        procs[0].wait(timeout=60)
        assert start("1,0") == (1, "0"), "another worker's index 1 is the same physical GPU 0"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_devices_setting_is_validated():
    with pytest.raises(ConfigError, match="trainer.devices"):
        config_from_dict(copy.deepcopy(TINY), ["trainer.devices=2", "trainer.device=mps"])
    with pytest.raises(ConfigError, match="trainer.devices"):
        config_from_dict(copy.deepcopy(TINY), ["trainer.devices=0"])
