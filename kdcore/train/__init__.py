"""Training: the loop, checkpoints, convergence and device choices."""

from kdcore.train.callbacks import TrainCallbacks
from kdcore.train.convergence import Convergence
from kdcore.train.device import autocast_dtype, resolve_device, seed_everything
from kdcore.train.loop import FitResult, fit

__all__ = ["Convergence", "FitResult", "TrainCallbacks", "fit", "autocast_dtype", "resolve_device", "seed_everything"]
