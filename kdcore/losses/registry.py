"""The loss registry, the ``DistillLoss`` base class and ``create_loss`` (validated construction)."""

from __future__ import annotations

import copy
import math
from typing import Any, Mapping

from torch import Tensor, nn

from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.registry import Registry
from kdcore.signature import accepted_params, check_kwargs
from kdcore.tensors import detached, rows

Shapes = Mapping[str, tuple[int, ...]]  # module path -> per-sample feature shape


class DistillLoss(nn.Module):
    """Base of every loss: declares the features it needs and returns named, unweighted terms."""

    name = "loss"
    needs_teacher = True
    #: a loss that softens logits with a ``temperature`` parameter sets this, and its ``temperature``
    #: then defaults to the config section's own (``distill.temperature``) unless set per loss
    takes_temperature = False

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

    def class_logits(self, inp: KDInputs, min_classes: int = 1) -> tuple[Tensor, Tensor]:
        """The student's logits and the teacher's (detached), both flattened to (samples, classes)
        (a sequence model's time steps become samples); a clear error below ``min_classes``."""
        c = inp.student_logits.shape[-1]
        if c < min_classes:
            raise KdflowError(f"loss {self.name!r} needs at least {min_classes} classes")
        teacher = detached(self.teacher_logits(inp))
        return rows(inp.student_logits, c), rows(teacher, teacher.shape[-1])


LOSSES: Registry[type[DistillLoss]] = Registry("loss function")


def loss_params(name: str) -> list[str]:
    """Keyword parameters accepted by the loss ``name``."""
    return accepted_params(LOSSES.get(name))


def create_loss(name: str, params: Mapping[str, Any] | None = None, also: tuple[str, ...] = ()) -> DistillLoss:
    """Build the registered loss ``name`` from ``params``; unknown or missing params raise KdflowError
    (listing ``also``, the settings the caller took out of ``params`` before, as accepted too)."""
    cls = LOSSES.get(name)
    params = dict(params or {})
    check_kwargs(f"loss {name!r}", cls, params, also=also)
    return cls(**params)


def with_temperature(spec: Mapping[str, Any], temperature: float) -> dict[str, Any]:
    """A copy of the loss spec ``{name: settings}`` in which every loss that ``takes_temperature``
    and does not set its own gets ``temperature``. Names that are not registered are left as they
    are (building the objective reports them)."""
    out = copy.deepcopy(dict(spec))
    for name, settings in out.items():
        if name in LOSSES and getattr(LOSSES.get(name), "takes_temperature", False):
            if settings is None:
                settings = out[name] = {}
            if isinstance(settings, dict):
                settings.setdefault("temperature", temperature)
    return out


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


def check_flag(loss: str, param: str, value: Any) -> bool:
    """``value`` if it is a bool, or a KdflowError naming the loss and parameter."""
    if not isinstance(value, bool):
        raise KdflowError(f"loss {loss!r}: parameter {param!r} must be true or false, got {value!r}")
    return value
