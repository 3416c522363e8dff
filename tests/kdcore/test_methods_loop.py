"""The training loop's deferred divergence check (one host sync per window of steps on accelerators)."""

import pytest
import torch

from kdcore.errors import DivergenceError
from kdcore.train.loop import _check_finite, _EpochSums


def test_deferred_check_names_the_first_bad_step(tmp_path):
    pending = [(10, torch.tensor(1.0)), (11, torch.tensor(float("inf"))), (12, torch.tensor(float("nan")))]
    with pytest.raises(DivergenceError, match=r"distill: loss became inf at epoch 3, step 12; .*no checkpoint"):
        _check_finite(pending, "distill", 2, tmp_path)
    _check_finite([(0, torch.tensor(2.0)), (1, torch.tensor(-1.0))], "distill", 0, tmp_path)  # all finite: no error


def test_running_sums_on_cpu_are_plain_floats():
    running = _EpochSums(defer=False)
    for value, k in ((1.5, 4), (2.0, 2)):
        running.add("train_loss", torch.tensor(value), k)
    assert isinstance(running.floats["train_loss"], float) and not running.kept  # no tensor ops per step
    assert running.totals()["train_loss"] == pytest.approx(1.5 * 4 + 2.0 * 2)


def test_running_sums_on_an_accelerator_are_summed_at_the_epoch_end():
    """Deferred (an accelerator's way, here on CPU tensors): the steps' values are only kept, and the
    weighted sums come out once, equal to the per-step floats."""
    deferred, floats = _EpochSums(defer=True), _EpochSums(defer=False)
    steps = [(0.25, 128), (3.0, 128), (1.75, 37)]
    for value, k in steps:
        for sums in (deferred, floats):
            sums.add("train_loss", torch.tensor(value), k)
            sums.add("train_kd", torch.tensor(2 * value), k)
    assert not deferred.floats and len(deferred.kept["train_loss"]) == len(steps)
    assert deferred.totals() == pytest.approx(floats.totals(), rel=1e-6)
    assert deferred.totals()["train_kd"] == pytest.approx(2 * sum(v * k for v, k in steps))
    # terms on two devices (a loss's constant on the CPU beside device tensors) still sum
    mixed = _EpochSums(defer=True)
    mixed.add("train_w", torch.tensor(1.0, device="meta"), 2)
    mixed.add("train_w", torch.tensor(3.0), 2)
    # (a "meta" tensor stands for the device here: the stack succeeds, and only reading the value
    # fails, as a meta tensor holds none; without the move the stack itself fails on the devices)
    with pytest.raises(RuntimeError, match="item.. cannot be called on meta tensors"):
        mixed.totals()
