"""``KDInputs``: everything a distillation loss may look at for one batch."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class KDInputs:
    """Student/teacher logits, labels and the features tapped by module path."""

    student_logits: Tensor
    teacher_logits: Tensor | None
    targets: Tensor
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
