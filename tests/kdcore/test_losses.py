"""Losses against hand-computed formulas, parameter validation, and the weighted objective."""

import math

import pytest
import torch

from kdcore.errors import KdflowError
from kdcore.losses import KDInputs, build_objective, create_loss

S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
T = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
Y = torch.tensor([1, 2])


def softmax(row, temp=1.0):
    exps = [math.exp(v / temp) for v in row]
    return [e / sum(exps) for e in exps]


def hand_ce(logits, labels):
    return sum(-math.log(softmax(row)[y]) for row, y in zip(logits.tolist(), labels.tolist())) / len(labels)


def hand_kd(student, teacher, temp):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_t, p_s = softmax(t_row, temp), softmax(s_row, temp)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return temp * temp * total / len(student)


def inputs(**features):
    return KDInputs(student_logits=S, teacher_logits=T, targets=Y, **features)


def test_ce_matches_formula():
    loss = create_loss("ce")
    assert not loss.needs_teacher and loss.student_paths == []
    assert loss(inputs())["ce"].item() == pytest.approx(hand_ce(S, Y), rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_kd_matches_formula(temp):
    value = create_loss("kd", {"temperature": temp})(inputs())["kd"].item()
    assert value == pytest.approx(hand_kd(S, T, temp), rel=1e-5)


def test_kd_scales_with_t_squared():
    loss = create_loss("kd", {"temperature": 2.0})
    kl_only = hand_kd(S, T, 2.0) / 4.0
    assert loss(inputs())["kd"].item() == pytest.approx(4.0 * kl_only, rel=1e-5)


def test_kd_follows_a_temperature_changed_after_construction():
    """T^2 is kept as a tensor between steps; a temperature set later (a schedule) is what counts."""
    loss = create_loss("kd", {"temperature": 4.0})
    assert loss(inputs())["kd"].item() == pytest.approx(hand_kd(S, T, 4.0), rel=1e-5)
    loss.temperature = 2.0
    assert loss(inputs())["kd"].item() == pytest.approx(hand_kd(S, T, 2.0), rel=1e-5)


def test_kd_without_teacher_logits_fails():
    inp = KDInputs(student_logits=S, teacher_logits=None, targets=Y)
    with pytest.raises(KdflowError, match="teacher logits"):
        create_loss("kd")(inp)


def test_loss_param_validation():
    with pytest.raises(KdflowError) as err:
        create_loss("kd", {"temp": 2})
    assert "'kd'" in str(err.value) and "'temp'" in str(err.value) and "temperature" in str(err.value)
    with pytest.raises(KdflowError, match="'temperature'"):
        create_loss("kd", {"temperature": 0})
    with pytest.raises(KdflowError, match="'label_smoothing'"):
        create_loss("ce", {"label_smoothing": 1.5})
    with pytest.raises(KdflowError, match="'connector'"):
        create_loss("fitnet", {"pairs": [{"student": "a", "teacher": "b"}], "connector": "magic"})
    with pytest.raises(KdflowError, match="'pairs'"):
        create_loss("fitnet", {"pairs": [{"student": "a"}]})
    # a typo of the weight, which the objective takes out of each loss's settings: suggested and listed
    with pytest.raises(KdflowError, match=r"'wieght' \(did you mean 'weight'\?\); accepted parameters: .*, weight$"):
        build_objective({"kd": {"wieght": 0.9}})


def test_fitnet_identity_connector_equals_hand_mse():
    torch.manual_seed(0)
    s_feat, t_feat = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    s_vec, t_vec = torch.randn(2, 4), torch.randn(2, 4)
    loss = create_loss(
        "fitnet",
        {"pairs": [{"student": "a", "teacher": "b"}, {"student": "v", "teacher": "w"}], "connector": "none"},
    )
    loss.build({"a": (3, 2, 2), "v": (4,)}, {"b": (3, 2, 2), "w": (4,)})
    value = loss(inputs(student_features={"a": s_feat, "v": s_vec}, teacher_features={"b": t_feat, "w": t_vec}))
    mse_a = sum((x - y) ** 2 for x, y in zip(s_feat.flatten().tolist(), t_feat.flatten().tolist())) / s_feat.numel()
    mse_v = sum((x - y) ** 2 for x, y in zip(s_vec.flatten().tolist(), t_vec.flatten().tolist())) / s_vec.numel()
    assert value["fitnet"].item() == pytest.approx((mse_a + mse_v) / 2, rel=1e-5)


def test_fitnet_auto_connector_is_trained_and_none_mismatch_fails():
    loss = create_loss("fitnet", {"pairs": [{"student": "layer1", "teacher": "layer3"}]})
    assert loss.student_paths == ["layer1"] and loss.teacher_paths == ["layer3"]
    loss.build({"layer1": (8, 8, 8)}, {"layer3": (32, 4, 4)})
    assert sum(p.numel() for p in loss.parameters()) > 0
    feats = dict(
        student_features={"layer1": torch.randn(2, 8, 8, 8)},
        teacher_features={"layer3": torch.randn(2, 32, 4, 4)},
    )
    loss(inputs(**feats))["fitnet"].backward()
    assert all(p.grad is not None for p in loss.parameters())

    strict = create_loss("fitnet", {"pairs": [{"student": "layer1", "teacher": "layer3"}], "connector": "none"})
    with pytest.raises(KdflowError) as err:
        strict.build({"layer1": (8, 8, 8)}, {"layer3": (32, 4, 4)})
    msg = str(err.value)
    assert "'layer1'" in msg and "'layer3'" in msg and "(8, 8, 8)" in msg and "(32, 4, 4)" in msg


def test_objective_weighted_sum_and_paths():
    objective = build_objective(
        {
            "ce": {"weight": 0.25},
            "kd": {"weight": 0.75, "temperature": 2.0},
            "fitnet": {"weight": 2.0, "pairs": [{"student": "a", "teacher": "b"}], "connector": "none"},
        }
    )
    assert objective.weights == {"ce": 0.25, "kd": 0.75, "fitnet": 2.0}
    assert objective.needs_teacher and objective.student_paths == ["a"] and objective.teacher_paths == ["b"]
    objective.build({"a": (4,)}, {"b": (4,)})
    feats = dict(student_features={"a": torch.ones(2, 4)}, teacher_features={"b": torch.zeros(2, 4)})
    total, terms = objective(inputs(**feats))
    assert set(terms) == {"ce", "kd", "fitnet"}
    assert terms["fitnet"].item() == pytest.approx(1.0)
    expected = 0.25 * hand_ce(S, Y) + 0.75 * hand_kd(S, T, 2.0) + 2.0 * 1.0
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert not build_objective({"ce": {}}).needs_teacher


def test_objective_errors():
    with pytest.raises(KdflowError) as err:
        build_objective({"attention": {}})
    msg = str(err.value)
    assert "'attention'" in msg and "ce" in msg and "kd" in msg and "fitnet" in msg
    with pytest.raises(KdflowError, match="weight"):
        build_objective({"kd": {"weight": -1}})
    with pytest.raises(KdflowError, match="no losses"):
        build_objective({})


def hand_standardized(rows):
    out = []
    for row in rows.tolist():
        mean = sum(row) / len(row)
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
        out.append([(v - mean) / (std + 1e-7) for v in row])
    return torch.tensor(out)


def test_standardized_kd_is_kd_of_z_scored_logits_and_ignores_scale_and_offset():
    loss = create_loss("kd", {"temperature": 2.0, "standardize": True})
    value = loss(inputs())["kd"].item()
    # the teacher's second row is constant: it z-scores to zeros (uniform target), not to NaN
    assert value == pytest.approx(hand_kd(hand_standardized(S), hand_standardized(T), 2.0), rel=1e-5)
    assert value != pytest.approx(hand_kd(S, T, 2.0), rel=1e-3)
    # a student whose logits are the teacher's scaled and shifted matches it exactly
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0]])
    shaped = KDInputs(student_logits=0.2 * teacher + 5.0, teacher_logits=teacher, targets=Y)
    assert loss(shaped)["kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert create_loss("kd", {"temperature": 2.0})(shaped)["kd"].item() > 0.1
    with pytest.raises(KdflowError, match="'standardize' must be true or false"):
        create_loss("kd", {"standardize": "yes"})
