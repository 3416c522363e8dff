"""Small tensor helpers that the training step, the losses and the stages share.

Each skips an op that would change nothing: on a GPU a small model's step waits on host time
(every op is a dispatcher call, most a kernel launch), so a no-op cast or reshape per step costs
what a bare loop does not spend (bench/step_overhead.py counts the ops of a step)."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

#: a context that does nothing, made once (it holds no state, so every ``with`` may reuse it)
NO_CONTEXT = contextlib.nullcontext()


def on_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device`` (copied without blocking the host): itself when it already is."""
    return t if t.device == device else t.to(device, non_blocking=True)


def as_float32(t: Tensor) -> Tensor:
    """``t`` in float32: itself when it already is (``Tensor.float()`` would still dispatch)."""
    return t if t.dtype == torch.float32 else t.float()


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``: itself when it already is."""
    return t if t.dtype == dtype else t.to(dtype)


def rows(t: Tensor, width: int) -> Tensor:
    """``t`` as ``(samples, width)``: itself when it already has that shape (a sequence model's
    time steps become samples)."""
    return t if t.dim() == 2 and t.shape[1] == width else t.reshape(-1, width)


def flat(t: Tensor) -> Tensor:
    """``t`` as one dimension: itself when it already is."""
    return t if t.dim() == 1 else t.reshape(-1)


def detached(t: Tensor) -> Tensor:
    """``t`` cut from the autograd graph: itself when it is not in one."""
    return t.detach() if t.requires_grad else t
