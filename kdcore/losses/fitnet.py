"""``fitnet``: hint regression of student features onto teacher features through connectors."""
from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn
from torch.nn import functional as F

from kdcore.connectors import CONNECTORS, make_connector
from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, Shapes


def _check_pairs(pairs: Any) -> list[tuple[str, str]]:
    example = '[{"student": "layer2", "teacher": "layer3"}]'
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise KdflowError(f"loss 'fitnet': parameter 'pairs' must be a non-empty list like {example}, got {pairs!r}")
    checked = []
    for pair in pairs:
        if (
            not isinstance(pair, Mapping)
            or set(pair) != {"student", "teacher"}
            or not all(isinstance(v, str) and v for v in pair.values())
        ):
            raise KdflowError(
                f"loss 'fitnet': each entry of 'pairs' needs exactly the keys 'student' and 'teacher' "
                f"(module paths), like {example}; got {pair!r}"
            )
        checked.append((pair["student"], pair["teacher"]))
    return checked


@LOSSES.register("fitnet")
class FitNetLoss(DistillLoss):
    """Mean over pairs of MSE(connector(student feature), teacher feature)."""

    name = "fitnet"
    needs_teacher = True

    def __init__(self, *, pairs: list[dict[str, str]], connector: str = "auto") -> None:
        super().__init__()
        self.pairs = _check_pairs(pairs)
        if connector not in CONNECTORS:
            choices = ", ".join(CONNECTORS.names())
            raise KdflowError(f"loss 'fitnet': parameter 'connector' must be one of {choices}, got {connector!r}")
        self.connector = connector
        self.student_paths = list(dict.fromkeys(s for s, _ in self.pairs))
        self.teacher_paths = list(dict.fromkeys(t for _, t in self.pairs))
        self.connectors: nn.ModuleList | None = None

    def build(self, student_shapes: Shapes, teacher_shapes: Shapes) -> None:
        """One connector per pair, from the probed per-sample feature shapes."""
        connectors = []
        for s, t in self.pairs:
            if s not in student_shapes or t not in teacher_shapes:
                raise KdflowError(f"loss 'fitnet': no feature shape known for pair {s!r} -> {t!r}")
            try:
                connectors.append(make_connector(student_shapes[s], teacher_shapes[t], self.connector))
            except KdflowError as err:
                raise KdflowError(f"loss 'fitnet', pair student {s!r} -> teacher {t!r}: {err}") from None
        self.connectors = nn.ModuleList(connectors)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        if self.connectors is None:
            raise KdflowError("loss 'fitnet' was used before build(student_shapes, teacher_shapes)")
        total = None
        for (s, t), connector in zip(self.pairs, self.connectors):
            if s not in inp.student_features or t not in inp.teacher_features:
                raise KdflowError(f"loss 'fitnet': features for pair {s!r} -> {t!r} are missing from the batch")
            target = inp.teacher_features[t].detach()
            mapped = connector(inp.student_features[s])
            term = F.mse_loss(mapped, target.to(mapped.dtype))
            total = term if total is None else total + term
        return {"fitnet": total / len(self.pairs)}
