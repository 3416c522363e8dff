"""``dist``: distillation from a stronger teacher (Huang et al., NeurIPS 2022, "DIST").

KL divergence asks the student to reproduce the teacher's softened probabilities exactly, which a
much smaller student often cannot. DIST asks only that they be *correlated*: with P = softmax(z / T)
for the student and the teacher (batch x classes),

* the inter-class term is one minus the Pearson correlation of each sample's class probabilities
  (student row against teacher row), averaged over the batch;
* the intra-class term is one minus the Pearson correlation of each class's probabilities across
  the batch (student column against teacher column), averaged over the classes;

both times T^2. Pearson correlation ignores a shift and a positive scale, so the student keeps the
teacher's ranking of classes and of samples without matching its confidence. The loss returns
``dist_inter = beta * inter`` and ``dist_intra = gamma * intra``. The paper trains with
cross-entropy beside it (``ce`` at weight 1) and uses beta = gamma = 1, T = 1 on ImageNet and
beta = gamma = 2, T = 4 on CIFAR-100.

The intra-class term compares columns of the batch, so it depends on the batch's composition and
needs at least two samples per batch (a one-sample batch gets 0 for it).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, check_number

#: the smallest norm a centred row or column is divided by (a constant one stays finite)
NORM_EPS = 1e-8


def pearson_distance(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """1 - the Pearson correlation of ``a`` and ``b`` along ``dim``, one value per slice."""
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return 1.0 - F.cosine_similarity(a, b, dim=dim, eps=NORM_EPS)


@LOSSES.register("dist")
class DISTLoss(DistillLoss):
    """beta * inter-class + gamma * intra-class Pearson distance, each returned as its own term."""

    name = "dist"
    needs_teacher = True
    takes_temperature = True

    def __init__(self, *, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta = check_number("dist", "beta", beta, low=0.0, low_inclusive=True)
        self.gamma = check_number("dist", "gamma", gamma, low=0.0, low_inclusive=True)
        self.temperature = check_number("dist", "temperature", temperature, low=0.0, low_inclusive=False)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        t = self.temperature
        student, teacher = self.class_logits(inp, min_classes=2)
        # at least float32 whatever the autocast: a correlation of bf16 probabilities is coarse
        dtype = torch.promote_types(student.dtype, torch.float32)
        p_s = F.softmax(student.to(dtype) / t, dim=-1)
        p_t = F.softmax(teacher.to(dtype) / t, dim=-1)
        inter = pearson_distance(p_s, p_t, dim=1).mean() * (t * t)
        if p_s.shape[0] > 1:
            intra = pearson_distance(p_s, p_t, dim=0).mean() * (t * t)
        else:
            intra = p_s.new_zeros(())
        return {"dist_inter": self.beta * inter, "dist_intra": self.gamma * intra}
