"""Evaluation: predictions, classification metrics and model cost profiles (pure PyTorch).

The metric functions load on first use: ``metrics`` imports torchmetrics (seconds of start-up: it
brings torchvision's models and scipy), which ``kdcore.evaluate.promotion_rules`` and the CLI's
commands that only read the registry never need. ``predict`` stays an eager import: a lazy one
would lose to the submodule of the same name once anything imported that."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kdcore.evaluate.predict import predict
from kdcore.evaluate.profile import model_profile

if TYPE_CHECKING:
    from kdcore.evaluate.metrics import classification_metrics, per_sample_correct
    from kdcore.evaluate.table import comparison_table

#: name -> the module that defines it, imported on first use (torchmetrics; pandas for the table)
_LAZY = {
    "classification_metrics": "kdcore.evaluate.metrics",
    "per_sample_correct": "kdcore.evaluate.metrics",
    "comparison_table": "kdcore.evaluate.table",
}

__all__ = [
    "classification_metrics",
    "comparison_table",
    "model_profile",
    "per_sample_correct",
    "predict",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'kdcore.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
