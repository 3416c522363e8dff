"""``ttm``: transformed teacher matching (Zheng & Yang, ICLR 2024, "Knowledge Distillation Based on
Transformed Teacher Matching").

Hinton's KD softens both sides with the temperature. TTM softens only the teacher's: the student's
plain probabilities p_s = softmax(z_s) match the teacher's at temperature T, softmax(z_t / T) (a
power transform of the teacher's probabilities, p_t^(1/T) renormalised). The paper shows this is
KD plus a Rényi-entropy term that pushes the student towards smoother outputs of its own, a
regulariser the temperature on the student's side removes. There is no T^2 factor (the student's
logits are not divided by T, so its gradients are not shrunk).

``weighted: true`` is the paper's WTTM: each sample's divergence is weighted by the power sum
U(p_t) = sum_i p_t,i^(1/T) of the teacher's plain probabilities, which is larger where the teacher
is less sure (1 for a one-hot teacher, C^(1 - 1/T) for a uniform one). The paper trains both
beside cross-entropy (``ce`` at weight 1), as configs/methods/ttm.yaml does.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, check_flag, check_number


@LOSSES.register("ttm")
class TTMLoss(DistillLoss):
    """Batch mean of KL(softmax(teacher / T) || softmax(student)), optionally weighted per sample."""

    name = "ttm"
    needs_teacher = True
    takes_temperature = True

    def __init__(self, *, temperature: float = 4.0, weighted: bool = False) -> None:
        super().__init__()
        self.temperature = check_number("ttm", "temperature", temperature, low=0.0, low_inclusive=False)
        self.weighted = check_flag("ttm", "weighted", weighted)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        student, teacher = self.class_logits(inp)
        log_p_s = F.log_softmax(student, dim=-1)
        teacher = teacher.to(torch.promote_types(log_p_s.dtype, torch.float32))
        log_q_t = F.log_softmax(teacher / self.temperature, dim=-1)
        # per-sample KL in at least float32 (under autocast the student's log-probabilities are bf16)
        kl = F.kl_div(log_p_s.to(log_q_t.dtype), log_q_t, reduction="none", log_target=True).sum(dim=-1)
        if self.weighted:
            # U = sum_i p_i^(1/T) = exp(logsumexp(z / T) - logsumexp(z) / T): no underflowing powers
            t = self.temperature
            power_sum = torch.exp(torch.logsumexp(teacher / t, dim=-1) - torch.logsumexp(teacher, dim=-1) / t)
            kl = kl * power_sum
        return {"ttm": kl.mean()}
