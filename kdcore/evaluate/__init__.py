"""Evaluation: predictions, classification metrics and model cost profiles (pure PyTorch)."""

from kdcore.evaluate.metrics import classification_metrics, comparison_table, per_sample_correct
from kdcore.evaluate.predict import predict
from kdcore.evaluate.profile import model_profile

__all__ = [
    "classification_metrics",
    "comparison_table",
    "model_profile",
    "per_sample_correct",
    "predict",
]
