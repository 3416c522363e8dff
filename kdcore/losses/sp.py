"""``sp``: Similarity-Preserving KD (Tung & Mori, ICCV 2019).

For a batch of b samples and a layer pair, Q is the activation reshaped to (b, -1); the
similarity matrix G = Q Q^T is L2-normalised row by row; the loss is
1/b^2 * ||G~_t - G~_s||_F^2, summed over the pairs. Student and teacher features may have any
(different) shapes: only the b x b matrices are compared.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from kdcore.losses.inputs import KDInputs
from kdcore.losses.pairs import pair_features, parse_pairs, student_paths, teacher_paths
from kdcore.losses.registry import LOSSES, DistillLoss


def similarity(feature: Tensor) -> Tensor:
    """Row-normalised batch similarity matrix G~ (b, b) of a feature batch (b, ...)."""
    q = feature.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


@LOSSES.register("sp")
class SPLoss(DistillLoss):
    """Sum over pairs of ||G~_t - G~_s||_F^2 / b^2."""

    name = "sp"
    needs_teacher = True

    def __init__(self, *, pairs: list[dict[str, str]]) -> None:
        super().__init__()
        self.pairs = parse_pairs("sp", pairs)
        self.student_paths = student_paths(self.pairs)
        self.teacher_paths = teacher_paths(self.pairs)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        total = None
        for pair in self.pairs:
            s, t = pair_features("sp", pair, inp)
            b = s.shape[0]
            term = (similarity(t) - similarity(s)).pow(2).sum() / (b * b)
            total = term if total is None else total + term
        assert total is not None  # parse_pairs: at least one pair
        return {"sp": total}
