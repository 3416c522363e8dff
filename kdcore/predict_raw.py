"""Logits of a trained (or registered) model on raw inputs that a data-specific encoder turns into
the model's input tensor, batch by batch (text: :mod:`kdcore.text`; speech: :mod:`kdcore.speech`;
images: :mod:`kdcore.vision`)."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def set_mode(model: nn.Module, training: bool) -> None:
    try:
        model.train(training)
    except NotImplementedError:  # a torch.export program (how MLflow stores models) has no train/eval mode
        pass


def encoded_logits(
    model: nn.Module,
    encode: Callable[[Sequence[T]], torch.Tensor],
    items: Sequence[T],
    num_classes: int,
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits ``[N, C]`` (float32, CPU) of ``model`` on ``encode(items[i : i + batch_size])``, in
    eval mode (restored after)."""
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    set_mode(model, False)
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(items), batch_size):
                out.append(model(encode(items[i : i + batch_size]).to(device)).float().cpu())
    finally:
        set_mode(model, was_training)
    return torch.cat(out) if out else torch.empty(0, num_classes)
