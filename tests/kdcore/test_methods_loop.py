"""The training loop's deferred divergence check (one host sync per window of steps on accelerators)."""

import pytest
import torch

from kdcore.errors import DivergenceError
from kdcore.train.loop import _accumulate, _check_finite


def test_deferred_check_names_the_first_bad_step(tmp_path):
    pending = [(10, torch.tensor(1.0)), (11, torch.tensor(float("inf"))), (12, torch.tensor(float("nan")))]
    with pytest.raises(DivergenceError, match=r"distill: loss became inf at epoch 3, step 12; .*no checkpoint"):
        _check_finite(pending, "distill", 2, tmp_path)
    _check_finite([(0, torch.tensor(2.0)), (1, torch.tensor(-1.0))], "distill", 0, tmp_path)  # all finite: no error


def test_running_sums_on_cpu_are_plain_floats():
    running = {}
    for value, k in ((1.5, 4), (2.0, 2)):
        _accumulate(running, "train_loss", torch.tensor(value), k)
    assert isinstance(running["train_loss"], float)  # on CPU: plain floats, no tensor ops per step
    assert float(running["train_loss"]) == pytest.approx(1.5 * 4 + 2.0 * 2)
