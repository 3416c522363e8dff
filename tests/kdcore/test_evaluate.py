"""kdcore.evaluate: predictions, metrics on hand-checked logits, and model profiles."""

import math

import pytest
import torch
from torch import nn

from kdcore.errors import KdflowError
from kdcore.evaluate import (
    classification_metrics,
    comparison_table,
    model_profile,
    per_sample_correct,
    predict,
)

# Four samples over six classes; logits = log(probs), so softmax gives these probabilities back.
PROBS = torch.tensor(
    [
        [0.70, 0.10, 0.08, 0.06, 0.04, 0.02],  # target 0: top-1 correct, confidence 0.70
        [0.04, 0.68, 0.14, 0.07, 0.05, 0.02],  # target 2: top-1 wrong, in top-5, confidence 0.68
        [0.01, 0.30, 0.25, 0.20, 0.14, 0.10],  # target 0: outside the top-5, confidence 0.30
        [0.10, 0.15, 0.20, 0.05, 0.42, 0.08],  # target 4: top-1 correct, confidence 0.42
    ],
    dtype=torch.float64,
)
TARGETS = torch.tensor([0, 2, 0, 4])
LOGITS = PROBS.log().float()


def _ece_by_definition(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """sum over bins b of |B_b|/N * |acc(B_b) - conf(B_b)|, bins [k/n, (k+1)/n)."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).double()
    bins = (confidence * n_bins).floor().long()
    ece = 0.0
    for b in bins.unique():
        members = bins == b
        ece += members.double().mean().item() * abs(correct[members].mean().item() - confidence[members].mean().item())
    return ece


def test_classification_metrics_match_hand_computation():
    teacher = torch.zeros(4, 6)
    teacher[torch.arange(4), torch.tensor([0, 2, 1, 0])] = 1.0  # argmax 0, 2, 1, 0 vs student 0, 1, 1, 4

    metrics = classification_metrics(LOGITS, TARGETS, teacher_logits=teacher)

    assert metrics["top1"] == pytest.approx(2 / 4)
    assert metrics["top5"] == pytest.approx(3 / 4)
    assert metrics["agreement"] == pytest.approx(2 / 4)
    # 0.70 (right) and 0.68 (wrong) share bin [10/15, 11/15); 0.30 (wrong) and 0.42 (right) are alone.
    hand_ece = 2 / 4 * abs(0.5 - 0.69) + 1 / 4 * abs(0.0 - 0.30) + 1 / 4 * abs(1.0 - 0.42)
    assert hand_ece == pytest.approx(0.315)
    assert _ece_by_definition(PROBS, TARGETS) == pytest.approx(hand_ece)
    assert metrics["ece"] == pytest.approx(hand_ece, abs=1e-5)
    hand_nll = -(math.log(0.70) + math.log(0.14) + math.log(0.01) + math.log(0.42)) / 4
    assert metrics["nll"] == pytest.approx(hand_nll, abs=1e-5)
    assert all(isinstance(value, float) for value in metrics.values())


def test_metrics_without_teacher_and_with_few_classes():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    metrics = classification_metrics(logits, torch.tensor([1, 2]))
    assert "agreement" not in metrics
    assert metrics["top1"] == pytest.approx(0.5)
    assert metrics["top5"] == pytest.approx(1.0)  # k = min(5, 3) = 3 covers every class


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(KdflowError, match="targets"):
        classification_metrics(LOGITS, TARGETS[:3])
    with pytest.raises(KdflowError, match="teacher_logits"):
        classification_metrics(LOGITS, TARGETS, teacher_logits=torch.zeros(4, 5))


def test_per_sample_correct():
    correct = per_sample_correct(LOGITS, TARGETS)
    assert correct.dtype == torch.bool
    assert correct.tolist() == [True, False, False, True]


def test_comparison_table_has_one_row_per_model():
    table = comparison_table({"teacher": {"top1": 0.9, "params": 1e6}, "student": {"top1": 0.8}})
    assert table.index.name == "model"
    assert list(table.index) == ["teacher", "student"]
    assert table.loc["student", "top1"] == pytest.approx(0.8)
    assert math.isnan(table.loc["student", "params"])


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_predict_matches_forward_and_restores_training_mode():
    torch.manual_seed(0)
    model = _TinyNet().double().train()
    x = torch.randn(10, 8, dtype=torch.float64)

    logits = predict(model, x, batch_size=3)

    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with torch.no_grad():
        expected = model(x).float()
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert logits.shape == (10, 3)
    torch.testing.assert_close(logits, expected)

    model.eval()
    predict(model, x)
    assert not model.training


def test_predict_rejects_bad_arguments():
    model = _TinyNet()
    with pytest.raises(KdflowError, match="batch_size"):
        predict(model, torch.randn(4, 8), batch_size=0)
    with pytest.raises(KdflowError, match="move the model"):
        predict(model, torch.randn(4, 8), device="meta")


def test_flops_of_linear_are_per_sample():
    profile = model_profile(nn.Linear(10, 20), (10,), latency=False)
    assert profile["flops"] == 2 * 10 * 20
    assert "latency_ms" not in profile and "throughput" not in profile


def test_flops_of_small_conv_net():
    net = nn.Sequential(
        nn.Conv2d(3, 4, kernel_size=3, padding=1),  # 4x8x8 outputs, each 3*3*3 multiply-adds
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
    )
    profile = model_profile(net, (3, 8, 8), latency=False)
    assert profile["flops"] == 2 * (4 * 8 * 8) * (3 * 3 * 3) + 2 * (4 * 8 * 8) * 10


def test_params_and_size_on_disk():
    profile = model_profile(nn.Linear(10, 20), (10,), latency=False)
    assert profile["params"] == 10 * 20 + 20
    assert profile["size_bytes"] >= 4 * profile["params"]


class _TiedTokenModel(nn.Module):
    """Token ids [T] -> logits; tied embedding/output weights and a non-contiguous buffer."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(12, 6)
        self.out = nn.Linear(6, 12, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("scale", torch.ones(6, 2).t())  # non-contiguous

    def forward(self, tokens):
        return self.out(self.embed(tokens).mean(dim=1) * self.scale[0])


def test_profile_with_example_tokens_tied_weights_and_non_contiguous_state():
    model = _TiedTokenModel()
    tokens = torch.randint(0, 12, (5,))
    profile = model_profile(model, (5,), example=tokens, latency=False)
    assert profile["params"] == 12 * 6
    assert profile["size_bytes"] >= 4 * profile["params"]
    assert profile["flops"] == 2 * 6 * 12
    with pytest.raises(KdflowError, match="example"):
        model_profile(model, (7,), example=tokens, latency=False)


def test_profile_latency_leaves_the_callers_model_alone():
    model = _TinyNet().train()
    weight = model.head.weight
    before = {name: t.clone() for name, t in model.state_dict().items()}

    profile = model_profile(model, (8,), throughput_batch=16, min_run_time=0.05, num_threads=1)

    assert profile["latency_ms"] > 0
    assert profile["throughput"] > 0
    assert model.training and all(m.training for m in model.modules())
    assert model.head.weight is weight and weight.device.type == "cpu"
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, before[name])
