"""``kd``: Hinton et al.'s soft-target distillation, T^2 * KL(teacher_T || student_T)."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, check_number


@LOSSES.register("kd")
class KDLoss(DistillLoss):
    """KL divergence between temperature-softened teacher and student distributions, batch mean, times T^2."""

    name = "kd"
    needs_teacher = True
    takes_temperature = True

    def __init__(self, *, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = check_number("kd", "temperature", temperature, low=0.0, low_inclusive=False)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        t = self.temperature
        student = inp.student_logits
        teacher = self.teacher_logits(inp).detach()
        log_p_s = F.log_softmax(student.reshape(-1, student.shape[-1]) / t, dim=-1)
        p_t = F.softmax(teacher.reshape(-1, teacher.shape[-1]).to(log_p_s.dtype) / t, dim=-1)
        # the usual form (probability target): the same arithmetic as torchdistill's and a plain loop's
        # KD, so with the same data order and initialisation kdflow trains to the same weights
        kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
        return {"kd": kl * (t * t)}
