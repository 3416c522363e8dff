"""``pkt``: Probabilistic Knowledge Transfer (Passalis & Tefas, ECCV 2018).

Features (flattened to vectors) define, through the cosine kernel K(a, b) = (cos(a, b) + 1) / 2,
conditional probabilities p_{j|i} = K(x_i, x_j) / sum_{k != i} K(x_i, x_k) over the other samples
of the batch. The loss is the KL divergence sum_{j != i} p^t_{j|i} log(p^t_{j|i} / p^s_{j|i}) of
the teacher's from the student's distribution, averaged over anchors i and summed over pairs.
The dimensions of student and teacher features need not match.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.losses.pairs import pair_features, parse_pairs, student_paths, teacher_paths
from kdcore.losses.registry import LOSSES, DistillLoss, check_number


def conditional_probs(feature: Tensor, eps: float) -> Tensor:
    """p_{j|i} (b, b) from the cosine kernel, zero on the diagonal, rows summing to 1."""
    x = F.normalize(feature.flatten(1), dim=1)
    kernel = (x @ x.t() + 1.0) / 2.0
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    kernel = kernel * off
    return kernel / (kernel.sum(dim=1, keepdim=True) + eps)


@LOSSES.register("pkt")
class PKTLoss(DistillLoss):
    """Mean over anchors of KL(p^t_{.|i} || p^s_{.|i}), summed over pairs."""

    name = "pkt"
    needs_teacher = True

    def __init__(self, *, pairs: list[dict[str, str]], eps: float = 1e-7) -> None:
        super().__init__()
        self.pairs = parse_pairs("pkt", pairs)
        self.eps = check_number("pkt", "eps", eps, low=0.0, low_inclusive=False, high=1.0)
        self.student_paths = student_paths(self.pairs)
        self.teacher_paths = teacher_paths(self.pairs)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        total = None
        for pair in self.pairs:
            s, t = pair_features("pkt", pair, inp)
            if len(s) < 2:
                raise KdflowError("loss 'pkt' needs batches of at least 2 samples")
            p_t = conditional_probs(t, self.eps)
            p_s = conditional_probs(s, self.eps)
            kl = (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).sum(dim=1).mean()
            total = kl if total is None else total + kl
        assert total is not None  # parse_pairs: at least one pair
        return {"pkt": total}
