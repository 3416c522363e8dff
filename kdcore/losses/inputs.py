"""``KDInputs``: everything a distillation loss may look at for one batch."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class KDInputs:
    """Student/teacher logits, labels, the features tapped by module path and, when the trainer
    knows them, the batch's dataset indices (rows of the train split; losses with a per-sample
    memory, such as ``crd``, need them). For mixed views (``cache.views.mix``) ``mix_targets`` are
    the partners' labels and ``mix_lam`` each input's own weight: the input is ``lam`` of sample
    ``targets`` and ``1 - lam`` of sample ``mix_targets``."""

    student_logits: Tensor
    teacher_logits: Tensor | None
    targets: Tensor
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)
    indices: Tensor | None = None
    mix_targets: Tensor | None = None
    mix_lam: Tensor | None = None
