"""``kd``: Hinton et al.'s soft-target distillation, T^2 * KL(teacher_T || student_T).

``standardize: true`` z-scores each sample's logits (teacher's and student's, over the classes)
before the temperature, as in Sun et al., CVPR 2024 ("Logit Standardization in Knowledge
Distillation"): the student then matches the shape of the teacher's logits, not their scale or
offset, which a much smaller student often cannot reach. With it, the temperature applies to
logits of unit spread (the paper uses about 2).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, check_flag, check_number
from kdcore.tensors import as_dtype

#: added to a sample's logit spread before dividing by it (a constant row stays finite)
STD_EPS = 1e-7


def standardized(logits: Tensor) -> Tensor:
    """Each row's logits minus their mean, over their standard deviation."""
    mean = logits.mean(dim=-1, keepdim=True)
    return (logits - mean) / (logits.std(dim=-1, keepdim=True) + STD_EPS)


@LOSSES.register("kd")
class KDLoss(DistillLoss):
    """KL divergence between temperature-softened teacher and student distributions, batch mean, times T^2."""

    name = "kd"
    needs_teacher = True
    takes_temperature = True

    def __init__(self, *, temperature: float = 4.0, standardize: bool = False) -> None:
        super().__init__()
        self.temperature = check_number("kd", "temperature", temperature, low=0.0, low_inclusive=False)
        self.standardize = check_flag("kd", "standardize", standardize)
        self._scale: tuple[float, Tensor] | None = None  # (T, T^2 as a tensor), made again when T changes

    def _t_squared(self, t: float) -> Tensor:
        """T^2 as a 0-dim float32 tensor on the CPU: it multiplies to the bits a Python float does,
        without turning the float into a tensor on every step, forward and backward."""
        if self._scale is None or self._scale[0] != t:
            self._scale = (t, torch.tensor(t * t))
        return self._scale[1]

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        t = self.temperature
        student, teacher = self.class_logits(inp)
        if self.standardize:  # in float32 whatever the autocast (the spread of a bf16 row is coarse)
            student, teacher = standardized(student.float()), standardized(teacher.float())
        log_p_s = F.log_softmax(student / t, dim=-1)
        p_t = F.softmax(as_dtype(teacher, log_p_s.dtype) / t, dim=-1)
        # the usual form (probability target): the same arithmetic as torchdistill's and a plain loop's
        # KD, so with the same data order and initialisation kdflow trains to the same weights
        kl = F.kl_div(log_p_s, p_t, reduction="batchmean")
        return {"kd": kl * self._t_squared(t)}
