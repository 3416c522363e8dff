"""Batched inference over an in-memory tensor, or over images streamed from files."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from kdcore.errors import KdflowError


def _check_model_device(model: nn.Module, device: torch.device) -> None:
    first: Optional[Tensor] = next(model.parameters(), None)
    if first is None:
        first = next(model.buffers(), None)
    if first is not None and first.device.type != device.type:
        raise KdflowError(
            f"predict: the model is on {first.device} but device={device}; move the model to {device} first."
        )


def predict(
    model: nn.Module,
    x: Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Return the model's outputs for every row of ``x`` as a float32 CPU tensor.

    ``x`` is an in-memory tensor ``[N, ...]``; batches of ``batch_size`` rows are moved to
    ``device`` (where the model must already live). The model runs in eval mode under
    ``torch.inference_mode`` and gets its previous training mode back afterwards.
    """
    if hasattr(x, "dataset") and not isinstance(x, Tensor):  # a streamed split's lazy images
        return _predict_streamed(model, x, batch_size=batch_size, device=torch.device(device))
    if batch_size < 1:
        raise KdflowError(f"predict: batch_size must be >= 1, got {batch_size}.")
    if x.dim() == 0 or x.shape[0] == 0:
        raise KdflowError(f"predict: x must be a non-empty tensor [N, ...], got shape {tuple(x.shape)}.")
    device = torch.device(device)
    _check_model_device(model, device)

    was_training = model.training
    model.eval()
    try:
        outputs = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], batch_size):
                batch = x[start : start + batch_size].to(device, non_blocking=True)
                outputs.append(model(batch).float().cpu())
        return torch.cat(outputs)
    finally:
        model.train(was_training)


def _predict_streamed(model: nn.Module, images, *, batch_size: int, device: torch.device) -> Tensor:
    """:func:`predict` over ``split.x`` of a streamed split (:class:`kdcore.data.stream.LazyImages`):
    a DataLoader with the split's workers decodes the images in order."""
    from kdcore.train.batches import as_input, make_loader

    if batch_size < 1:
        raise KdflowError(f"predict: batch_size must be >= 1, got {batch_size}.")
    _check_model_device(model, device)
    n = len(images)
    workers = int(getattr(images, "num_workers", 0))
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    loader = make_loader(images.dataset, batches, workers, device)
    was_training = model.training
    model.eval()
    try:
        outputs = []
        with torch.inference_mode():
            for raw in loader:
                outputs.append(model(as_input(images.dataset, raw["x"], device)).float().cpu())
        return torch.cat(outputs)
    finally:
        model.train(was_training)
