"""``KDInputs``: everything a distillation loss may look at for one batch."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class KDInputs:
    """Student/teacher logits, labels, the features tapped by module path and, when the trainer
    knows them, the batch's dataset indices (rows of the train split; losses with a per-sample
    memory, such as ``crd``, need them)."""

    student_logits: Tensor
    teacher_logits: Tensor | None
    targets: Tensor
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    indices: Tensor | None = None
