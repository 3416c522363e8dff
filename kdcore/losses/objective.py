"""``Objective``: a weighted sum of named losses, built from a config mapping."""

from __future__ import annotations

import math
from typing import Any, Mapping, cast

import torch
from torch import Tensor, nn

from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss, Shapes, create_loss


def _union(lists: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(p for paths in lists for p in paths))


class Objective(nn.Module):
    """Runs every loss, returns ``(sum of weight * term, {term: unweighted value})``."""

    def __init__(self, losses: Mapping[str, DistillLoss], weights: Mapping[str, float]) -> None:
        super().__init__()
        if not losses:
            raise KdflowError(f"the objective has no losses; known losses: {', '.join(LOSSES.names())}")
        self.losses = nn.ModuleDict(dict(losses))
        self.weights: dict[str, float] = {name: float(weights.get(name, 1.0)) for name in losses}
        # what forward walks each step, looked up once (the same modules as ``self.losses``; the
        # weights are fixed when the objective is built, as ``build_objective`` does). A weight
        # of 1 multiplies nothing; the others are 0-dim float32 tensors on the CPU, which multiply a
        # term on any device as a Python float does, to the same bits, without the conversion of a
        # Python scalar into a tensor that each such product makes forward and backward
        self._weighted = [
            (cast(DistillLoss, loss), None if self.weights[name] == 1.0 else torch.tensor(self.weights[name]))
            for name, loss in self.losses.items()
        ]

    def _losses(self) -> list[DistillLoss]:
        # nn.ModuleDict types its values as nn.Module; __init__ only puts DistillLosses in it
        return [cast(DistillLoss, loss) for loss in self.losses.values()]

    @property
    def student_paths(self) -> list[str]:
        return _union([loss.student_paths for loss in self._losses()])

    @property
    def teacher_paths(self) -> list[str]:
        return _union([loss.teacher_paths for loss in self._losses()])

    @property
    def needs_teacher(self) -> bool:
        return any(loss.needs_teacher for loss in self._losses())

    def build(self, student_shapes: Shapes, teacher_shapes: Shapes, num_samples: int | None = None) -> None:
        """Let each loss create its connectors (call before moving to a device and making the optimiser).

        ``num_samples`` (the training set's size) goes to losses that keep per-sample memory."""
        for loss in self._losses():
            if num_samples is not None:
                loss.bind_dataset(num_samples)
            loss.build(student_shapes, teacher_shapes)

    def forward(self, inp: KDInputs) -> tuple[Tensor, dict[str, Tensor]]:
        total: Tensor | None = None
        terms: dict[str, Tensor] = {}
        for loss, weight in self._weighted:
            for term_name, value in loss(inp).items():
                if term_name in terms:
                    raise KdflowError(f"two losses both return a term named {term_name!r}")
                terms[term_name] = value
                weighted = value if weight is None else weight * value
                total = weighted if total is None else total + weighted
        if total is None:
            total = torch.zeros((), device=inp.student_logits.device)
        return total, terms


def _check_weight(name: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise KdflowError(f"loss {name!r}: weight must be a number >= 0, got {weight!r}")
    return float(weight)


def build_objective(spec: Mapping[str, Mapping[str, Any] | None]) -> Objective:
    """``{"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4}}`` -> an Objective."""
    if not isinstance(spec, Mapping):
        raise KdflowError(f"the objective must map loss names to their settings, got {spec!r}")
    losses: dict[str, DistillLoss] = {}
    weights: dict[str, float] = {}
    for name, settings in spec.items():
        LOSSES.get(name)
        if settings is None:
            settings = {}
        if not isinstance(settings, Mapping):
            raise KdflowError(f"loss {name!r}: settings must be a mapping of parameters, got {settings!r}")
        params = dict(settings)
        weights[name] = _check_weight(name, params.pop("weight", 1.0))
        losses[name] = create_loss(name, params, also=("weight",))
    return Objective(losses, weights)
