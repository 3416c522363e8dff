"""Distillation losses: each returns named unweighted terms; an Objective sums them with weights."""
from kdcore.losses import ce, fitnet, kd  # noqa: F401  (registers the losses)
from kdcore.losses.ce import CELoss
from kdcore.losses.fitnet import FitNetLoss
from kdcore.losses.inputs import KDInputs
from kdcore.losses.kd import KDLoss
from kdcore.losses.objective import Objective, build_objective
from kdcore.losses.registry import LOSSES, DistillLoss, create_loss, loss_params

__all__ = [
    "LOSSES",
    "CELoss",
    "DistillLoss",
    "FitNetLoss",
    "KDInputs",
    "KDLoss",
    "Objective",
    "build_objective",
    "create_loss",
    "loss_params",
]
