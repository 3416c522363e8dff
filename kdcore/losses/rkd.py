"""``rkd``: Relational Knowledge Distillation (Park et al., CVPR 2019).

On a batch of embeddings (features flattened to vectors):

* distance: psi_D(i, j) = ||t_i - t_j|| / mu, mu the mean distance over the pairs i != j;
  L_D = mean over pairs i != j of Huber(psi_D^s - psi_D^t);
* angle: psi_A(i, j, k) = <e_ij, e_kj>, e_ij = (t_i - t_j) / ||t_i - t_j||, the cosine of the angle
  at j; L_A = mean over triplets of distinct i, j, k of Huber(psi_A^s - psi_A^t).

Huber is the smooth L1 loss with delta = 1. The terms are returned as ``rkd_distance =
distance_weight * L_D`` and ``rkd_angle = angle_weight * L_A`` (the paper's 25 and 50), summed
over pairs. Distances and angles come from the b x b Gram matrix, so memory grows with b^3
scalars, not with the feature dimension.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.losses.pairs import pair_features, parse_pairs, student_paths, teacher_paths
from kdcore.losses.registry import LOSSES, DistillLoss, check_number

_EPS = 1e-12


def pairwise_distances(x: Tensor) -> tuple[Tensor, Tensor]:
    """(Gram matrix, Euclidean distance matrix) of the rows of ``x`` (b, d)."""
    gram = x @ x.t()
    sq = gram.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min(_EPS)  # the clamp also stops the sqrt's gradient at 0
    return gram, d2.sqrt()


def distance_potential(x: Tensor) -> Tensor:
    """psi_D for every pair i != j, as a flat vector."""
    _, dist = pairwise_distances(x)
    off = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    d = dist[off]
    return d / d.mean().clamp_min(_EPS)


def angle_potential(x: Tensor) -> Tensor:
    """psi_A(i, j, k) for every triplet of distinct indices, as a flat vector (index order [j, i, k])."""
    gram, dist = pairwise_distances(x)
    diag = gram.diagonal()
    # <t_i - t_j, t_k - t_j> = G_ik - G_ij - G_jk + G_jj, laid out as [j, i, k]
    dot = gram[None, :, :] - gram.t()[:, :, None] - gram[:, None, :] + diag[:, None, None]
    cos = dot / (dist[:, :, None] * dist[:, None, :])
    b = len(x)
    eye = torch.eye(b, dtype=torch.bool, device=x.device)
    distinct = ~(eye[:, :, None] | eye[:, None, :] | eye[None, :, :])
    return cos[distinct]


@LOSSES.register("rkd")
class RKDLoss(DistillLoss):
    """distance_weight * L_D + angle_weight * L_A, each returned as its own term."""

    name = "rkd"
    needs_teacher = True

    def __init__(self, *, pairs: list[dict[str, str]], distance_weight: float = 25.0,
                 angle_weight: float = 50.0) -> None:
        super().__init__()
        self.pairs = parse_pairs("rkd", pairs)
        self.distance_weight = check_number("rkd", "distance_weight", distance_weight, low=0.0, low_inclusive=True)
        self.angle_weight = check_number("rkd", "angle_weight", angle_weight, low=0.0, low_inclusive=True)
        self.student_paths = student_paths(self.pairs)
        self.teacher_paths = teacher_paths(self.pairs)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        dist_total = angle_total = None
        for pair in self.pairs:
            s, t = pair_features("rkd", pair, inp)
            if len(s) < 3:
                raise KdflowError("loss 'rkd' needs batches of at least 3 samples")
            s, t = s.flatten(1), t.flatten(1)
            with torch.no_grad():
                t_d, t_a = distance_potential(t), angle_potential(t)
            dist = F.smooth_l1_loss(distance_potential(s), t_d) if self.distance_weight else s.new_zeros(())
            angle = F.smooth_l1_loss(angle_potential(s), t_a) if self.angle_weight else s.new_zeros(())
            dist_total = dist if dist_total is None else dist_total + dist
            angle_total = angle if angle_total is None else angle_total + angle
        return {"rkd_distance": self.distance_weight * dist_total, "rkd_angle": self.angle_weight * angle_total}
