"""Feature taps by module path, shape probing and connectors."""

import pytest
import torch
from torch import nn

from kdcore.connectors import make_connector
from kdcore.errors import KdflowError
from kdcore.hooks import FeatureTap, module_paths, probe_shapes
from kdcore.models import create_model


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_tap_captures_submodule_output_and_removes_hooks():
    torch.manual_seed(0)
    model = create_model("cnn_tiny", in_channels=1, num_classes=3).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad(), FeatureTap(model, ["block1", "block2.relu", "fc"]) as tap:
        logits = model(x)
        assert _hook_count(model) == 3
    assert _hook_count(model) == 0
    with torch.no_grad():
        expected = model.block1(x)
    assert torch.equal(tap.features["block1"], expected)
    assert torch.equal(tap.features["fc"], logits)
    assert tap.features["block2.relu"].shape == (2, 16, 4, 4)


def test_tap_keeps_first_element_of_tuple_outputs():
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 6, batch_first=True)
            self.fc = nn.Linear(6, 2)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.fc(out[:, -1])

    model = Tagger()
    x = torch.randn(3, 5, 4)
    with FeatureTap(model, ["rnn"]) as tap:
        model(x)
    assert torch.equal(tap.features["rnn"], model.rnn(x)[0])
    assert probe_shapes(model, ["rnn"], x) == {"rnn": (5, 6)}


def test_unknown_path_lists_valid_paths():
    model = create_model("cnn_tiny", in_channels=1, num_classes=3)
    with pytest.raises(KdflowError) as err:
        FeatureTap(model, ["block9"])
    msg = str(err.value)
    assert "'block9'" in msg and "block1.conv" in msg and "fc" in msg
    assert "" not in module_paths(model) and "block2.pool" in module_paths(model)


def test_probe_shapes_restores_training_mode():
    model = create_model("resnet8", in_channels=3, num_classes=10).train()
    shapes = probe_shapes(model, ["layer1", "layer3", "fc"], torch.randn(2, 3, 32, 32))
    assert shapes == {"layer1": (16, 32, 32), "layer3": (64, 8, 8), "fc": (10,)}
    assert model.training and _hook_count(model) == 0


@pytest.mark.parametrize(
    "student,teacher",
    [((8, 16, 16), (32, 8, 8)), ((8, 4, 4), (32, 8, 8)), ((16, 8, 8), (16, 8, 8)), ((10,), (20,)), ((5, 6), (5, 9))],
)
def test_auto_connector_maps_to_teacher_shape(student, teacher):
    conn = make_connector(student, teacher)
    out = conn(torch.randn(2, *student))
    assert out.shape == (2, *teacher)
    if student == teacher:
        assert isinstance(conn, nn.Identity)


def test_none_connector_and_bad_kind():
    assert isinstance(make_connector((4, 2, 2), (4, 2, 2), "none"), nn.Identity)
    with pytest.raises(KdflowError) as err:
        make_connector((8, 4, 4), (16, 4, 4), "none")
    msg = str(err.value)
    assert "(8, 4, 4)" in msg and "(16, 4, 4)" in msg and "connector is needed" in msg
    with pytest.raises(KdflowError, match="auto, conv, linear, none"):
        make_connector((4,), (4,), "magic")
