"""``at``: Attention Transfer (Zagoruyko & Komodakis, ICLR 2017).

For a feature map A (C, H, W) the spatial attention map is Q = sum_c |A_c|^p (p = 2 in the
paper), flattened and L2-normalised. Per layer pair the loss is ||q_s - q_t||_2 averaged over the
batch; pairs are summed and halved (the paper's beta/2 * sum_j, beta being this loss's weight).
Channels may differ; when the spatial sizes differ, the student's attention map is resized to the
teacher's (bilinear up-sampling, area averaging down) before normalisation.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from kdcore.losses.inputs import KDInputs
from kdcore.losses.pairs import pair_features, pair_shapes, parse_pairs, require_rank, student_paths, teacher_paths
from kdcore.losses.registry import LOSSES, DistillLoss, Shapes, check_number


def attention_map(feature: Tensor, p: float) -> Tensor:
    """sum_c |A_c|^p of a batch of maps (N, C, H, W) -> (N, H, W)."""
    return feature.abs().pow(p).sum(dim=1)


def resize_map(att: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize attention maps (N, H, W) to ``size``: area averaging to shrink, bilinear to grow."""
    if tuple(att.shape[-2:]) == tuple(size):
        return att
    x = att[:, None]
    if att.shape[-2] >= size[0] and att.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)[:, 0]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[:, 0]


@LOSSES.register("at")
class ATLoss(DistillLoss):
    """1/2 * sum over pairs of the batch-mean L2 distance between normalised attention maps."""

    name = "at"
    needs_teacher = True

    def __init__(self, *, pairs: list[dict[str, str]], p: float = 2.0) -> None:
        super().__init__()
        self.pairs = parse_pairs("at", pairs)
        self.p = check_number("at", "p", p, low=0.0, low_inclusive=False)
        self.student_paths = student_paths(self.pairs)
        self.teacher_paths = teacher_paths(self.pairs)

    def build(self, student_shapes: Shapes, teacher_shapes: Shapes) -> None:
        for pair in self.pairs:
            s, t = pair_shapes("at", pair, student_shapes, teacher_shapes)
            require_rank("at", pair, s, t, (3,), "feature maps (C, H, W) on both sides")

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        total = None
        for pair in self.pairs:
            s, t = pair_features("at", pair, inp)
            q_t = attention_map(t, self.p)
            q_s = resize_map(attention_map(s, self.p), (q_t.shape[-2], q_t.shape[-1]))
            q_s = F.normalize(q_s.flatten(1), dim=1)
            q_t = F.normalize(q_t.flatten(1), dim=1)
            term = (q_s - q_t).norm(dim=1).mean()
            total = term if total is None else total + term
        assert total is not None  # parse_pairs: at least one pair
        return {"at": 0.5 * total}
