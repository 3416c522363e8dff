"""``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022).

The KD loss splits into a target-class term and a non-target-class term:

* TCKD = T^2 * KL(b_t || b_s), with b = [p_gt, 1 - p_gt] the binary target / rest probabilities
  of the temperature-softened distribution;
* NCKD = T^2 * KL(p~_t || p~_s), with p~ the softmax over the non-target classes only.

The loss returns ``dkd_tckd = alpha * TCKD`` and ``dkd_nckd = beta * NCKD`` (batch means), both
scaled by a linear warm-up factor ``min(step / warmup, 1)`` over the first ``warmup`` training
steps (the paper warms DKD up over its first epochs; 0 switches it off).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, check_number


def _split_log_probs(logits: Tensor, target: Tensor, t: float) -> tuple[Tensor, Tensor, Tensor]:
    """(log p_gt, log(1 - p_gt), log-softmax over the non-target classes) of ``logits / t``."""
    z = logits / t
    n, c = z.shape
    gt_mask = F.one_hot(target, c).bool()
    z_other = z[~gt_mask].view(n, c - 1)
    lse_all = torch.logsumexp(z, dim=1)
    lse_other = torch.logsumexp(z_other, dim=1)
    log_p_gt = z.gather(1, target[:, None]).squeeze(1) - lse_all
    log_p_rest = lse_other - lse_all
    return log_p_gt, log_p_rest, z_other - lse_other[:, None]


@LOSSES.register("dkd")
class DKDLoss(DistillLoss):
    """alpha * TCKD + beta * NCKD, each returned as its own term."""

    name = "dkd"
    needs_teacher = True
    takes_temperature = True

    def __init__(self, *, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: int = 0) -> None:
        super().__init__()
        self.alpha = check_number("dkd", "alpha", alpha, low=0.0, low_inclusive=True)
        self.beta = check_number("dkd", "beta", beta, low=0.0, low_inclusive=True)
        self.temperature = check_number("dkd", "temperature", temperature, low=0.0, low_inclusive=False)
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise KdflowError(
                f"loss 'dkd': parameter 'warmup' must be an integer >= 0 (training steps), got {warmup!r}"
            )
        self.warmup = warmup
        self.steps: Tensor
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # checkpointed with the objective

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        t = self.temperature
        s, tl = self.class_logits(inp, min_classes=2)
        tl = tl.to(s.dtype)
        y = inp.targets.reshape(-1)
        s_gt, s_rest, s_other = _split_log_probs(s, y, t)
        with torch.no_grad():
            t_gt, t_rest, t_other = _split_log_probs(tl, y, t)
        # KL(b_t || b_s) over the two bins, and KL over the non-target classes; batch means
        tckd = (t_gt.exp() * (t_gt - s_gt) + t_rest.exp() * (t_rest - s_rest)).mean() * (t * t)
        nckd = (t_other.exp() * (t_other - s_other)).sum(1).mean() * (t * t)
        scale: Tensor | float = 1.0
        if self.warmup:
            if self.training:
                self.steps += 1
            scale = (self.steps.to(s.dtype) / self.warmup).clamp(max=1.0)  # a tensor: no device sync
        return {"dkd_tckd": scale * self.alpha * tckd, "dkd_nckd": scale * self.beta * nckd}
