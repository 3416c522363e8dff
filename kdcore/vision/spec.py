"""What an image model needs beside its weights to read new pictures (``image.json``): the input
size and channels, how files were resized (in memory: straight to the square size with PIL; streamed:
the shorter side to the size, then the centre crop, with torchvision), the train split's per-channel
mean and std, and the class names."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch

from kdcore.errors import KdflowError
from kdcore.json_file import JsonFile

FORMAT = "kdflow-image/1"
RESIZES = ("square", "shorter_side_crop")


@dataclass
class ImageSpec(JsonFile):
    what: ClassVar[str] = "image spec"
    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]
    resize: Literal["square", "shorter_side_crop"] = "square"
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise KdflowError(f"image spec: resize must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise KdflowError(f"image spec: mean and std need one value per channel ({self.channels})")

    def pixels(self, image: str | Path | np.ndarray) -> torch.Tensor:
        """uint8 ``[C, H, W]`` of a file (decoded and resized as the training data was) or of an array
        ``[H, W]`` / ``[H, W, C]`` (uint8, already at the model's size)."""
        if isinstance(image, np.ndarray):
            a = image if image.ndim == 3 else image[:, :, None]
            if a.dtype != np.uint8 or a.shape != (self.height, self.width, self.channels):
                raise KdflowError(
                    f"an image array must be uint8 [{self.height}, {self.width}, {self.channels}] (grey: "
                    f"[{self.height}, {self.width}]), got {a.dtype} {tuple(image.shape)}"
                )
            return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
        if self.resize == "shorter_side_crop":
            from kdcore.data.stream import decode, eval_view

            return eval_view(decode(str(image), self.channels == 1), self.height)
        if self.channels not in (1, 3):
            raise KdflowError(f"this model takes {self.channels}-channel inputs: give arrays, not image files")
        from kdcore.data.imagefolder import pil_pixels

        mode = "L" if self.channels == 1 else "RGB"
        a = pil_pixels(image, mode)
        if a.shape[:2] != (self.height, self.width):  # resized as the in-memory image folder does
            if self.height != self.width:
                raise KdflowError(f"{image}: {a.shape[1]}x{a.shape[0]}, the model takes {self.width}x{self.height}")
            a = pil_pixels(image, mode, self.height)
        # a copy: PIL's arrays are read-only, which torch.from_numpy warns about
        return torch.from_numpy(np.array(a[None] if a.ndim == 2 else a.transpose(2, 0, 1), order="C"))

    def encode(self, images: Sequence[str | Path | np.ndarray]) -> torch.Tensor:
        """float32 ``[N, C, H, W]``: the pixels scaled to [0, 1] and normalised as in training."""
        if not len(images):
            return torch.zeros(0, self.channels, self.height, self.width)
        x = torch.stack([self.pixels(i) for i in images]).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)

    # ---- storage -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImageSpec":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise KdflowError(f"not a kdflow image spec (expected format {FORMAT!r})")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})
