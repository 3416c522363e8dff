"""Distillation losses: each returns named unweighted terms; an Objective sums them with weights."""

from kdcore.losses import at, ce, crd, dist, dkd, fitnet, kd, logit_mse, pkt, rkd, sp, ttm  # noqa: F401  (registers the losses)
from kdcore.losses.at import ATLoss
from kdcore.losses.ce import CELoss
from kdcore.losses.crd import CRDLoss
from kdcore.losses.dist import DISTLoss
from kdcore.losses.dkd import DKDLoss
from kdcore.losses.fitnet import FitNetLoss
from kdcore.losses.inputs import KDInputs
from kdcore.losses.kd import KDLoss
from kdcore.losses.logit_mse import LogitMSELoss
from kdcore.losses.objective import Objective, build_objective
from kdcore.losses.pkt import PKTLoss
from kdcore.losses.registry import LOSSES, DistillLoss, create_loss, loss_params, with_temperature
from kdcore.losses.rkd import RKDLoss
from kdcore.losses.sp import SPLoss
from kdcore.losses.ttm import TTMLoss

__all__ = [
    "LOSSES",
    "ATLoss",
    "CELoss",
    "CRDLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillLoss",
    "FitNetLoss",
    "KDInputs",
    "KDLoss",
    "LogitMSELoss",
    "Objective",
    "PKTLoss",
    "RKDLoss",
    "SPLoss",
    "TTMLoss",
    "build_objective",
    "create_loss",
    "loss_params",
    "with_temperature",
]
