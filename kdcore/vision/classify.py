"""Run an image classifier on picture files or arrays, encoded as its training data was
(:class:`~kdcore.vision.spec.ImageSpec`), in batches."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from kdcore.predict_raw import encoded_logits
from kdcore.vision.spec import ImageSpec

Image = str | Path | np.ndarray


def image_logits(model: nn.Module, spec: ImageSpec, images: Sequence[Image], batch_size: int = 256) -> torch.Tensor:
    """Logits ``[N, C]`` (float32, CPU) of ``model`` (a kdcore model or the registered one MLflow
    loads back) for image files or uint8 arrays."""
    return encoded_logits(model, spec.encode, list(images), len(spec.class_names), batch_size)


def classify_images(model: nn.Module, spec: ImageSpec, images: Sequence[Image], batch_size: int = 256) -> list[str]:
    """The predicted class name of each image (class index as text without names)."""
    pred = image_logits(model, spec, images, batch_size).argmax(1).tolist()
    return [spec.class_names[p] if p < len(spec.class_names) else str(p) for p in pred]
