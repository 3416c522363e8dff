"""TorchScript export: scripted when possible, traced otherwise, and refused when the exported
file does not reproduce the model's outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import TINY
from kdcore.config import config_from_dict
from kdcore.export import ExportError, export_torchscript, to_torchscript


def test_student_export_matches_the_model(tmp_path):
    from kdcore.data import load_dataset
    from kdcore.models import create_model

    cfg = config_from_dict(copy.deepcopy(TINY))
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    model = create_model("cnn_tiny", in_channels=data.in_channels, num_classes=data.num_classes).eval()
    out = export_torchscript(model, data.test.x[:300], tmp_path / "student.pt", atol=1e-5, batch_size=128)
    assert out.path.is_file() and out.samples == 300
    assert out.method in ("script", "trace")
    assert 0.0 <= out.max_abs_diff <= 1e-5
    reloaded = torch.jit.load(str(out.path))
    with torch.no_grad():
        assert torch.allclose(reloaded(data.test.x[:7]), model(data.test.x[:7]), atol=1e-5)
        assert reloaded(data.test.x[:1]).shape == (1, data.num_classes), "other batch sizes work too"


class Scriptable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow survives scripting
            return self.fc(x)
        return -self.fc(x)


class Branchy(nn.Module):
    """Not scriptable (``*args``), and its branch depends on the data: a trace freezes one branch."""

    def forward(self, x, *args):
        if float(x.mean()) > 0:
            return x * 2
        return -x


def test_scripting_keeps_control_flow(tmp_path):
    x = torch.cat([torch.ones(4, 4), -torch.ones(4, 4)])
    out = export_torchscript(Scriptable(), x, tmp_path / "s.pt", atol=1e-6, batch_size=4)
    assert out.method == "script" and out.max_abs_diff <= 1e-6


def test_a_trace_that_disagrees_with_the_model_is_refused(tmp_path):
    assert to_torchscript(Branchy(), torch.ones(2, 2))[1] == "trace"
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    with pytest.raises(ExportError, match="differs from the PyTorch model by up to 3"):
        export_torchscript(Branchy(), x, tmp_path / "b.pt", atol=1e-4, batch_size=2)
