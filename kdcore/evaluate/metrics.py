"""Classification metrics (torchmetrics)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

from kdcore.errors import KdflowError

ECE_BINS = 15


def _check_logits(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise KdflowError(f"logits must be [N, C] with C >= 2, got shape {tuple(logits.shape)}.")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise KdflowError(
            f"targets must be [N] matching logits [N, C]; got targets {tuple(targets.shape)} "
            f"and logits {tuple(logits.shape)}."
        )
    if logits.shape[0] == 0:
        raise KdflowError("cannot compute metrics on zero samples.")


def per_sample_correct(logits: Tensor, targets: Tensor) -> Tensor:
    """Boolean ``[N]``: whether each sample's argmax equals its target (for McNemar tests)."""
    _check_logits(logits, targets)
    return logits.detach().argmax(dim=1).cpu() == targets.detach().cpu()


def classification_metrics(
    logits: Tensor,
    targets: Tensor,
    *,
    teacher_logits: Tensor | None = None,
) -> dict[str, float]:
    """Accuracy (top-1, top-k with k = min(5, C)), ECE (15 bins, l1), NLL and teacher agreement.

    Accuracies are fractions in [0, 1]; ``agreement`` (only with ``teacher_logits``) is the
    fraction of samples whose argmax equals the teacher's.
    """
    _check_logits(logits, targets)
    logits = logits.detach().float().cpu()
    targets = targets.detach().long().cpu()
    num_classes = logits.shape[1]

    def accuracy(k: int) -> float:
        return multiclass_accuracy(logits, targets, num_classes=num_classes, average="micro", top_k=k).item()

    metrics = {
        "top1": accuracy(1),
        "top5": accuracy(min(5, num_classes)),
        # Probabilities are passed explicitly so torchmetrics never guesses whether to softmax.
        "ece": multiclass_calibration_error(
            logits.softmax(dim=1), targets, num_classes=num_classes, n_bins=ECE_BINS, norm="l1"
        ).item(),
        "nll": F.cross_entropy(logits, targets).item(),
    }
    if teacher_logits is not None:
        if teacher_logits.shape != logits.shape:
            raise KdflowError(
                f"teacher_logits shape {tuple(teacher_logits.shape)} does not match "
                f"student logits {tuple(logits.shape)}."
            )
        teacher_pred = teacher_logits.detach().cpu().argmax(dim=1)
        metrics["agreement"] = (logits.argmax(dim=1) == teacher_pred).float().mean().item()
    return metrics
