"""bench/step_overhead.py: kdflow's distillation step issues few ops beyond a bare loop's.

The op counts are the profiler's (deterministic, unlike times); the bound is what the step needs
beyond the bare loop's arithmetic (its loss bookkeeping: the loss and each term detached and, on
the CPU, read as floats; the objective's weights applied apart from the KD term's T^2, both as
0-dim tensors that need no conversion, so that the step now issues fewer ops than the bare loop),
and fails with the no-op casts, reshapes, Python-scalar weights and per-batch numpy reads the step
made before."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench import step_overhead as bench
from kdcore.models import create_model
from kdcore.train.checkpoint import save_model

# the ops a kdflow step may issue beyond the bare loop's (-5 online and cached when written; 47 and 54 before)
EXTRA_OPS = 8


@pytest.fixture
def setup(tmp_path):
    before = torch.get_num_threads()
    torch.manual_seed(0)
    save_model(create_model("cnn_tiny", in_channels=1, num_classes=10), tmp_path / "teacher.safetensors")
    save_model(create_model("cnn_tiny", in_channels=1, num_classes=10), tmp_path / "student.safetensors")
    yield bench.bundle(256), tmp_path
    torch.set_num_threads(before)


@pytest.mark.parametrize("cached", [False, True])
def test_a_kdflow_step_issues_few_ops_beyond_a_bare_loops(setup, cached):
    data, work = setup
    args = argparse.Namespace(epochs=1, batch_size=16, n=256, device="cpu")
    suffix = "-cached" if cached else ""
    bare = bench.ops_per_step(f"bare{suffix}", args, data, work)
    kdflow = bench.ops_per_step(f"kdflow{suffix}", args, data, work)
    assert bare > 200  # the profiler counted a real step (forward, backward, optimizer)
    assert kdflow - bare <= EXTRA_OPS, f"kdflow {kdflow} ops a step against the bare loop's {bare}"


def test_the_table_compares_like_with_like(capsys):
    bench.main(["--rounds", "1", "--epochs", "1", "--n", "256", "--variants", "bare-cached", "kdflow-cached"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| kdflow-cached")]
    assert len(rows) == 1 and rows[0].endswith("x |")
