"""``rkd``: Relational Knowledge Distillation (Park et al., CVPR 2019).

On a batch of embeddings (features flattened to vectors):

* distance: psi_D(i, j) = ||t_i - t_j|| / mu, mu the mean distance over the pairs i != j;
  L_D = mean over pairs i != j of Huber(psi_D^s - psi_D^t);
* angle: psi_A(i, j, k) = <e_ij, e_kj>, e_ij = (t_i - t_j) / ||t_i - t_j||, the cosine of the angle
  at j; L_A = mean over triplets of distinct i, j, k of Huber(psi_A^s - psi_A^t).

Huber is the smooth L1 loss with delta = 1. The terms are returned as ``rkd_distance =
distance_weight * L_D`` and ``rkd_angle = angle_weight * L_A`` (the paper's 25 and 50), summed
over pairs. The angle term holds b^2 x d unit vectors and b^3 cosines (as in the authors' code);
``angle_anchors: a`` restricts the angle's vertex j to the batch's first a samples (the batch is
already shuffled), cutting its cost b/a times; the default (null) uses every triplet, as the paper.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.losses.pairs import pair_features, parse_pairs, student_paths, teacher_paths
from kdcore.losses.registry import LOSSES, DistillLoss, check_number

_EPS = 1e-12


def distance_potential(x: Tensor) -> tuple[Tensor, Tensor]:
    """(psi_D (b, b), mask of the pairs i != j); the diagonal is excluded by the mask."""
    b = len(x)
    off = ~torch.eye(b, dtype=torch.bool, device=x.device)
    sq = (x * x).sum(1)
    # the clamp also stops the sqrt's gradient on the (masked) diagonal
    dist = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(_EPS).sqrt()
    mu = (dist * off).sum() / off.sum()
    return dist / mu.clamp_min(_EPS), off


def angle_potential(x: Tensor, anchors: int) -> Tensor:
    """psi_A (a, b, b) indexed [j, i, k] = <e_ij, e_kj> for the first ``anchors`` samples j.

    Degenerate triplets cost nothing: e_jj is the zero vector (cosine 0 on both sides) and i = k
    gives 1 on both sides, so a sum over all entries divided by a(b-1)(b-2) is the mean over the
    triplets of distinct indices."""
    e = F.normalize(x[None, :, :] - x[:anchors, None, :], dim=2)  # e[j, i] = (t_i - t_j) / ||t_i - t_j||
    return torch.bmm(e, e.transpose(1, 2))


def masked_huber(a: Tensor, b: Tensor, mask: Tensor) -> Tensor:
    """Mean of the smooth L1 (Huber, delta 1) of a - b over the entries where ``mask`` holds."""
    return (F.smooth_l1_loss(a, b, reduction="none") * mask).sum() / mask.sum()


@LOSSES.register("rkd")
class RKDLoss(DistillLoss):
    """distance_weight * L_D + angle_weight * L_A, each returned as its own term."""

    name = "rkd"
    needs_teacher = True

    def __init__(
        self,
        *,
        pairs: list[dict[str, str]],
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        angle_anchors: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.pairs = parse_pairs("rkd", pairs)
        self.distance_weight = check_number("rkd", "distance_weight", distance_weight, low=0.0, low_inclusive=True)
        self.angle_weight = check_number("rkd", "angle_weight", angle_weight, low=0.0, low_inclusive=True)
        if angle_anchors is not None and (
            isinstance(angle_anchors, bool) or not isinstance(angle_anchors, int) or angle_anchors < 1
        ):
            raise KdflowError(
                f"loss 'rkd': parameter 'angle_anchors' must be a positive integer or null, got {angle_anchors!r}"
            )
        self.angle_anchors = angle_anchors
        self.student_paths = student_paths(self.pairs)
        self.teacher_paths = teacher_paths(self.pairs)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        dist_total = angle_total = None
        for pair in self.pairs:
            s, t = pair_features("rkd", pair, inp)
            if len(s) < 3:
                raise KdflowError("loss 'rkd' needs batches of at least 3 samples")
            s, t = s.flatten(1), t.flatten(1)
            dist = angle = s.new_zeros(())
            if self.distance_weight:
                with torch.no_grad():
                    t_d, _ = distance_potential(t)
                s_d, off = distance_potential(s)
                dist = masked_huber(s_d, t_d, off)
            if self.angle_weight:
                b = len(s)
                a = min(self.angle_anchors or b, b)
                with torch.no_grad():
                    t_a = angle_potential(t, a)
                angle = F.smooth_l1_loss(angle_potential(s, a), t_a, reduction="sum") / (a * (b - 1) * (b - 2))
            dist_total = dist if dist_total is None else dist_total + dist
            angle_total = angle if angle_total is None else angle_total + angle
        assert dist_total is not None and angle_total is not None  # parse_pairs: at least one pair
        return {"rkd_distance": self.distance_weight * dist_total, "rkd_angle": self.angle_weight * angle_total}
