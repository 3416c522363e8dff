"""``ce``: cross-entropy of the student's logits with the labels."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, check_number


@LOSSES.register("ce")
class CELoss(DistillLoss):
    """Cross-entropy with optional label smoothing; logits (N, ..., C) pair with labels (N, ...)."""

    name = "ce"
    needs_teacher = False

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = check_number(
            "ce", "label_smoothing", label_smoothing, low=0.0, low_inclusive=True, high=1.0
        )

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        logits = inp.student_logits
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), inp.targets.reshape(-1), label_smoothing=self.label_smoothing
        )
        return {"ce": loss}
