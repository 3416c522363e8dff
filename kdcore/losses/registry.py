"""The loss registry, the ``DistillLoss`` base class and ``create_loss`` (validated construction)."""
from __future__ import annotations

import inspect
import math
from typing import Any, Mapping

from torch import Tensor, nn

from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.registry import Registry

Shapes = Mapping[str, tuple[int, ...]]  # module path -> per-sample feature shape


class DistillLoss(nn.Module):
    """Base of every loss: declares the features it needs and returns named, unweighted terms."""

    name = "loss"
    needs_teacher = True

    def __init__(self) -> None:
        super().__init__()
        self.student_paths: list[str] = []
        self.teacher_paths: list[str] = []

    def bind_dataset(self, num_samples: int) -> None:
        """Told the training set's size before ``build`` (losses with per-sample memory use it); default no-op."""

    def build(self, student_shapes: Shapes, teacher_shapes: Shapes) -> None:
        """Create shape-dependent parts (connectors) once feature shapes are known; default no-op."""

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def teacher_logits(self, inp: KDInputs) -> Tensor:
        """The batch's teacher logits, or a clear error if the trainer did not provide them."""
        if inp.teacher_logits is None:
            raise KdflowError(f"loss {self.name!r} needs teacher logits, but none were given")
        return inp.teacher_logits


LOSSES: Registry[type[DistillLoss]] = Registry("loss function")


def loss_params(name: str) -> list[str]:
    """Keyword parameters accepted by the loss ``name``."""
    cls = LOSSES.get(name)
    params = inspect.signature(cls.__init__).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in params if p.kind in kinds and p.name != "self"]


def create_loss(name: str, params: Mapping[str, Any] | None = None) -> DistillLoss:
    """Build the registered loss ``name`` from ``params``; unknown or missing params raise KdflowError."""
    cls = LOSSES.get(name)
    params = dict(params or {})
    accepted = loss_params(name)
    listed = ", ".join(accepted) or "(none)"
    for key in params:
        if key not in accepted:
            raise KdflowError(f"loss {name!r} has no parameter {key!r}; accepted parameters: {listed}")
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.name in accepted and p.default is inspect.Parameter.empty and p.name not in params:
            raise KdflowError(f"loss {name!r} needs parameter {p.name!r}; accepted parameters: {listed}")
    return cls(**params)


def check_number(
    loss: str, param: str, value: Any, *, low: float, low_inclusive: bool, high: float = math.inf
) -> float:
    """``value`` as a float, or a KdflowError naming the loss and parameter and the allowed range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= low if low_inclusive else value > low) and value < high
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and < {high}" if high != math.inf else "")
        raise KdflowError(f"loss {loss!r}: parameter {param!r} must be a number {bound}, got {value!r}")
    return float(value)
