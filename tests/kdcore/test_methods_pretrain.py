"""Student from teacher layers: configurable block selection, narrower layers by slicing, and the
pretrain stage training the new or reshaped layers while the copied ones stay frozen."""

import pytest
import torch

from conftest import tiny_config
from kdcore.data import load_dataset
from kdcore.errors import KdflowError
from kdcore.models import create_model, transplant
from kdcore.stages import StageEnv, pretrain_student


def resnet(depth, widths, seed=0):
    torch.manual_seed(seed)
    return create_model("resnet", in_channels=1, num_classes=10, depth=depth, widths=widths)


def cnn(channels, seed=0):
    torch.manual_seed(seed)
    return create_model("cnn", in_channels=1, num_classes=10, channels=channels)


def test_deep_to_shallow_resnet_copies_the_first_block_of_each_stage():
    """resnet32x4 -> resnet8x4 in miniature: same widths, one block per stage instead of five."""
    teacher, student = resnet(32, [4, 4, 8, 8]), resnet(8, [4, 4, 8, 8], seed=1)
    report = transplant(student, teacher, select="first")
    assert report.sliced == [] and set(report.copied) == set(student.state_dict())
    for stage in ("layer1", "layer2", "layer3"):
        assert torch.equal(
            student.get_submodule(f"{stage}.0").conv2.weight, teacher.get_submodule(f"{stage}.0").conv2.weight
        )


def test_select_by_stage_and_reshaped_blocks():
    teacher, student = resnet(32, [4, 4, 8, 8]), resnet(8, [4, 4, 8, 8], seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    report = transplant(student, teacher, select={"layer1": [4], "layer3": [2]})
    assert torch.equal(student.layer1[0].conv1.weight, teacher.layer1[4].conv1.weight)
    assert torch.equal(student.layer2[0].conv1.weight, teacher.layer2[0].conv1.weight)  # unlisted: first block
    # teacher layer3.2 takes 8 channels in, the student's first layer3 block too (stage 2 is 8 wide) ...
    assert torch.equal(student.layer3[0].conv2.weight, teacher.layer3[2].conv2.weight)
    # ... but it has no down-sampling shortcut, so the student's stays new (untouched)
    assert "layer3.0.shortcut.0.weight" not in report.copied
    assert torch.equal(student.layer3[0].shortcut[0].weight, before["layer3.0.shortcut.0.weight"])
    with pytest.raises(KdflowError, match=r"select\['layer1'\].*one teacher block index"):
        transplant(resnet(8, [4, 4, 8, 8]), teacher, select={"layer1": [7]})
    with pytest.raises(KdflowError, match="stage.*'layer9'.*student stages: layer1, layer2"):
        transplant(resnet(8, [4, 4, 8, 8]), teacher, select={"layer9": [0]})


def test_narrower_cnn_takes_leading_slices_only_with_partial():
    teacher, student = cnn([8, 16, 32]), cnn([4, 8], seed=1)
    strict = transplant(cnn([4, 8], seed=1), teacher)  # without partial: only same-shape tensors
    assert "block1.conv.weight" not in strict.all and strict.sliced == []
    report = transplant(student, teacher, partial=True)
    assert "block1.conv.weight" in report.sliced and "block2.conv.weight" in report.sliced
    assert torch.equal(student.block1.conv.weight, teacher.block1.conv.weight[:4])
    assert torch.equal(student.block2.conv.weight, teacher.block2.conv.weight[:8, :4])
    assert torch.equal(student.fc.weight, teacher.fc.weight[:, :8])
    assert "fc.bias" in report.copied  # same shape: copied whole


@pytest.fixture(scope="module")
def digits():
    return load_dataset(tiny_config(data={"limit_train": 320}).data)


def _env(tmp_path, data, **pretrain):
    cfg = tiny_config(
        student={"arch": "cnn", "kwargs": {"channels": [4, 8]}},
        pretrain={"method": "teacher_layers", "train": {"max_epochs": 1, "batch_size": 64}, **pretrain},
    )
    return StageEnv(cfg, data, tmp_path)


def test_pretrain_trains_sliced_layers_and_keeps_copied_ones_frozen(tmp_path, digits):
    teacher = create_model("cnn", in_channels=1, num_classes=digits.num_classes, channels=[8, 16, 32])
    env = _env(tmp_path, digits, partial=True)
    res = pretrain_student(env, None, teacher)
    assert res.info["trained_new_layers"] and res.info["sliced_tensors"] > 0 and res.fit.epochs_run == 1
    student = res.model
    assert torch.equal(student.fc.bias.cpu(), teacher.fc.bias)  # copied whole -> frozen
    assert not torch.equal(student.block1.conv.weight.cpu(), teacher.block1.conv.weight[:4])  # sliced -> trained
    assert all(p.requires_grad for p in student.parameters())  # frozen only during pretraining


def test_pretrain_of_a_resnet_with_new_blocks(tmp_path, digits):
    """Teacher blocks chosen per stage; the student's reshaped block (no teacher shape) trains, copied ones don't."""
    teacher = create_model("resnet", in_channels=1, num_classes=digits.num_classes, depth=14, widths=[4, 4, 8, 8])
    cfg = tiny_config(
        student={"arch": "resnet", "kwargs": {"depth": 8, "widths": [4, 4, 8, 8]}},
        pretrain={
            "method": "teacher_layers",
            "select": {"layer2": [1]},
            "train": {"max_epochs": 1, "batch_size": 64},
            "losses": {"ce": {"weight": 1.0}},
        },
    )
    res = pretrain_student(StageEnv(cfg, digits, tmp_path), None, teacher)
    student = res.model.cpu()
    assert res.info["trained_new_layers"]
    assert torch.equal(student.layer1[0].conv1.weight, teacher.layer1[0].conv1.weight)  # copied, frozen
    assert torch.equal(student.layer2[0].conv2.weight, teacher.layer2[1].conv2.weight)
    # layer2.1 of the teacher takes 8 channels in, the student's layer2.0 takes 4: new, and trained
    assert student.layer2[0].conv1.weight.shape != teacher.layer2[1].conv1.weight.shape
    env2 = StageEnv(cfg, digits, tmp_path / "fresh")
    untrained = env2.new_student().cpu()
    assert not torch.equal(student.layer2[0].conv1.weight, untrained.layer2[0].conv1.weight)


def test_pretrain_skips_training_when_everything_was_copied(tmp_path, digits):
    teacher = create_model("resnet", in_channels=1, num_classes=digits.num_classes, depth=14, widths=[4, 4, 8, 8])
    cfg = tiny_config(
        student={"arch": "resnet", "kwargs": {"depth": 8, "widths": [4, 4, 8, 8]}},
        pretrain={"method": "teacher_layers", "train": {"max_epochs": 1}},
    )
    res = pretrain_student(StageEnv(cfg, digits, tmp_path), None, teacher)
    assert res.info["trained_new_layers"] is False and res.fit is None
    assert torch.equal(res.model.cpu().layer3[0].conv2.weight, teacher.layer3[0].conv2.weight)
