"""``ce``: cross-entropy of the student's logits with the labels."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, check_number
from kdcore.tensors import flat, rows


@LOSSES.register("ce")
class CELoss(DistillLoss):
    """Cross-entropy with optional label smoothing; logits (N, ..., C) pair with labels (N, ...).
    On mixed inputs, the mixed target: ``lam * CE(targets) + (1 - lam) * CE(mix_targets)``."""

    name = "ce"
    needs_teacher = False

    def __init__(self, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = check_number(
            "ce", "label_smoothing", label_smoothing, low=0.0, low_inclusive=True, high=1.0
        )

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        logits = inp.student_logits
        samples = rows(logits, logits.shape[-1])
        if inp.mix_targets is not None and inp.mix_lam is not None:
            own = F.cross_entropy(samples, flat(inp.targets), reduction="none", label_smoothing=self.label_smoothing)
            other = F.cross_entropy(
                samples, flat(inp.mix_targets), reduction="none", label_smoothing=self.label_smoothing
            )
            lam = inp.mix_lam.to(own.device, own.dtype)
            lam = lam.reshape(-1, *([1] * (inp.targets.dim() - 1))).expand_as(inp.targets).reshape(-1)
            return {"ce": (lam * own + (1 - lam) * other).mean()}
        loss = F.cross_entropy(samples, flat(inp.targets), label_smoothing=self.label_smoothing)
        return {"ce": loss}
