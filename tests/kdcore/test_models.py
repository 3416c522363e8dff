"""Model registry, architectures and teacher-to-student weight transfer."""

import json

import pytest
import torch

from kdcore.errors import KdflowError
from kdcore.models import MODELS, create_model, init_from_teacher


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ["cnn_tiny", "cnn_large", "resnet8", "resnet8x4"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_forward_shapes(arch, channels, size):
    model = create_model(arch, in_channels=channels, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 5)


def test_generic_cnn_deep_on_small_input_and_dropout():
    model = create_model("cnn", in_channels=1, num_classes=3, channels=[4, 4, 4, 4, 4], dropout=0.5)
    assert [n for n, _ in model.block1.named_children()] == ["conv", "bn", "relu", "pool"]
    assert isinstance(model.dropout, torch.nn.Dropout)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_resnet_module_names():
    model = create_model("resnet20", in_channels=3, num_classes=10)
    names = dict(model.named_children())
    assert list(names) == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3", "avgpool", "fc"]
    assert [n for n, _ in model.layer2.named_children()] == ["0", "1", "2"]
    block = model.layer2[0]
    assert {"conv1", "bn1", "conv2", "bn2", "shortcut", "relu"} <= set(dict(block.named_children()))


@pytest.mark.parametrize("arch,expected", [("resnet20", 0.27e6), ("resnet8x4", 1.2e6), ("resnet32x4", 7.4e6)])
def test_param_counts(arch, expected):
    model = create_model(arch, in_channels=3, num_classes=100)
    assert abs(n_params(model) - expected) / expected < 0.05


def test_spec_is_json_and_rebuilds():
    model = create_model("cnn", in_channels=3, num_classes=4, channels=(8, 16))
    spec = json.loads(json.dumps(model.kdflow_spec))
    assert spec == {"arch": "cnn", "in_channels": 3, "num_classes": 4, "kwargs": {"channels": [8, 16]}}
    again = create_model(
        spec["arch"], in_channels=spec["in_channels"], num_classes=spec["num_classes"], **spec["kwargs"]
    )
    assert again.state_dict().keys() == model.state_dict().keys()


def test_unknown_arch_lists_known():
    with pytest.raises(KdflowError) as err:
        create_model("vgg99", in_channels=3, num_classes=10)
    assert "vgg99" in str(err.value) and "resnet8x4" in str(err.value) and "cnn_tiny" in str(err.value)
    assert "resnet32x4" in MODELS


def test_bad_kwarg_names_arch_kwarg_and_accepted():
    with pytest.raises(KdflowError) as err:
        create_model("cnn", in_channels=3, num_classes=10, channels=[8], widht=3)
    msg = str(err.value)
    assert "'cnn'" in msg and "'widht'" in msg and "channels" in msg and "dropout" in msg
    with pytest.raises(KdflowError, match="depth"):
        create_model("resnet", in_channels=3, num_classes=10, depth=10, widths=[16, 16, 32, 64])
    with pytest.raises(KdflowError, match="needs parameter 'channels'"):
        create_model("cnn", in_channels=3, num_classes=10)


def _teacher_student(select="first"):
    torch.manual_seed(0)
    teacher = create_model("resnet20", in_channels=3, num_classes=10)  # 3 blocks per stage
    student = create_model("resnet8", in_channels=3, num_classes=10)  # 1 block per stage
    copied = init_from_teacher(student, teacher, select=select)
    return teacher, student, copied


def test_init_from_teacher_auto_copies_matching_tensors():
    teacher, student, copied = _teacher_student()
    t_state, s_state = teacher.state_dict(), student.state_dict()
    assert set(copied) == set(s_state)  # same family, same widths: everything has a counterpart
    for name in ("conv1.weight", "fc.weight", "layer2.0.conv1.weight", "layer1.0.bn1.running_var"):
        assert torch.equal(s_state[name], t_state[name])


@pytest.mark.parametrize("select,block", [("first", 0), ("last", 2), ("spread", 0)])
def test_init_from_teacher_select(select, block):
    teacher, student, _ = _teacher_student(select)
    assert torch.equal(student.layer3[0].conv2.weight, teacher.layer3[block].conv2.weight)


def test_init_from_teacher_spread_spacing():
    teacher = create_model("resnet32", in_channels=1, num_classes=3)  # 5 blocks per stage
    student = create_model("resnet14", in_channels=1, num_classes=3)  # 2 blocks per stage
    init_from_teacher(student, teacher, select="spread")
    assert torch.equal(student.layer1[0].conv1.weight, teacher.layer1[0].conv1.weight)
    assert torch.equal(student.layer1[1].conv1.weight, teacher.layer1[4].conv1.weight)


def test_init_from_teacher_explicit_mapping_and_errors():
    teacher = create_model("resnet14", in_channels=3, num_classes=10)
    student = create_model("resnet8", in_channels=3, num_classes=10)
    copied = init_from_teacher(student, teacher, mapping={"layer1.0": "layer1.1"})
    assert copied and all(name.startswith("layer1.0.") for name in copied)
    assert torch.equal(student.layer1[0].conv2.weight, teacher.layer1[1].conv2.weight)

    wide = create_model("resnet8x4", in_channels=3, num_classes=10)
    with pytest.raises(KdflowError) as err:
        init_from_teacher(student, wide, mapping={"layer1": "layer1"})
    msg = str(err.value)
    assert "layer1.0.conv1.weight" in msg and "(16, 16, 3, 3)" in msg and "(64, 32, 3, 3)" in msg

    cnn = create_model("cnn_tiny", in_channels=1, num_classes=2)
    with pytest.raises(KdflowError, match="no tensor"):
        init_from_teacher(cnn, wide)
    with pytest.raises(KdflowError, match="first, last, spread"):
        init_from_teacher(student, teacher, select="middle")
