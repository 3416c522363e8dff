"""``logit_mse``: the student regresses the teacher's logits (mean squared error over the classes).

Ba & Caruana (NeurIPS 2014, "Do Deep Nets Really Need to be Deep?") trained shallow students this
way, and Kim et al. (IJCAI 2021, "Comparing Kullback-Leibler Divergence and Mean Squared Error Loss
in Knowledge Distillation") found it at least as good as KL at a temperature: it is KD's limit for a
large temperature (when the logits have zero mean), without a temperature to tune. The student
matches the teacher's logits themselves, scale and offset included; ``center: true`` removes each
row's mean first (softmax ignores it, so only the logits' differences are matched).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, check_flag


@LOSSES.register("logit_mse")
class LogitMSELoss(DistillLoss):
    """Mean over samples and classes of (student logit - teacher logit)^2."""

    name = "logit_mse"
    needs_teacher = True

    def __init__(self, *, center: bool = False) -> None:
        super().__init__()
        self.center = check_flag("logit_mse", "center", center)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        student, teacher = self.class_logits(inp)
        # in at least float32 under autocast (a bf16 difference of large logits is coarse)
        dtype = torch.promote_types(student.dtype, torch.float32)
        student, teacher = student.to(dtype), teacher.to(dtype)
        if self.center:
            student = student - student.mean(dim=-1, keepdim=True)
            teacher = teacher - teacher.mean(dim=-1, keepdim=True)
        return {"logit_mse": F.mse_loss(student, teacher)}
