"""Evaluation: predictions, classification metrics and model cost profiles (pure PyTorch).

Every name loads on first use: ``predict`` and ``model_profile`` import torch, ``metrics``
torchmetrics (seconds of start-up: it brings torchvision's models and scipy), ``table`` pandas,
none of which ``kdcore.evaluate.promotion_rules`` and the CLI's commands that only read the
registry or manage servers need. (``predict`` lives in ``predictions``: a function named like its
module would be shadowed by the module once anything imported that.)"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdcore.evaluate.metrics import classification_metrics, per_sample_correct
    from kdcore.evaluate.predictions import predict
    from kdcore.evaluate.profile import model_profile
    from kdcore.evaluate.table import comparison_table

#: name -> the module that defines it, imported on first use
_LAZY = {
    "predict": "kdcore.evaluate.predictions",
    "model_profile": "kdcore.evaluate.profile",
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
