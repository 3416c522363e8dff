"""torch's global random generator, shared by every thread of a process.

Dropout masks (and CRD's sampled negatives) come from torch's one global generator. Stages that
train side by side in threads (the baseline beside the distillation branch, a sweep's trials)
would interleave their draws in whatever order the scheduler picks, so two runs with the same seed
would differ. Instead, a training step that draws random numbers reseeds the generator from
(seed, epoch, step) and runs its forward pass holding ``GLOBAL_RNG``; model initialisation holds it
too. The masks are then a function of the step alone: the same in every run, in any interleaving,
and after a resume. Steps whose modules draw nothing take no lock and run fully in parallel.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Iterator

import torch
from torch import nn

GLOBAL_RNG = threading.RLock()


def draws_randomness(modules: Iterable[nn.Module]) -> bool:
    """Whether a forward pass in training mode draws from the global generator: dropout of any
    kind with p > 0 (``nn.Dropout*``, the ``dropout`` argument of RNNs and attention, a model's
    own ``dropout`` rate), or a module that says so with ``draws_random = True``."""
    for root in modules:
        for m in root.modules():
            if getattr(m, "draws_random", False):
                return True
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
                return True
            rate = getattr(m, "dropout", None)
            if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0:
                return True
    return False


def step_seed(seed: int, epoch: int, step: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_003 + step) % (2**63 - 1)


@contextlib.contextmanager
def seeded_step(seed: int, epoch: int, step: int) -> Iterator[None]:
    """Hold the global generator, seeded for this step, for the block."""
    with GLOBAL_RNG:
        torch.manual_seed(step_seed(seed, epoch, step))
        yield
