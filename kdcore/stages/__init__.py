"""The pipeline's stages as plain functions: no orchestration, progress through callbacks."""

from kdcore.stages.distill import TeacherSource, distill_student, pretrain_student, train_baseline
from kdcore.stages.env import StageEnv, StageResult, classifier_val
from kdcore.stages.evaluate import evaluate_models
from kdcore.stages.features import build_features, teacher_paths
from kdcore.stages.teacher import train_teacher

__all__ = [
    "StageEnv",
    "StageResult",
    "TeacherSource",
    "build_features",
    "classifier_val",
    "distill_student",
    "evaluate_models",
    "pretrain_student",
    "teacher_paths",
    "train_baseline",
    "train_teacher",
]
