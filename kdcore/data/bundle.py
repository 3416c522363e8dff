"""The in-memory dataset handed to every stage: normalised tensors for train / val / test.

Most datasets kdflow works with (digits, MNIST, Fashion-MNIST, CIFAR, small image folders) fit in
memory, so a :class:`DataBundle` simply holds whole tensors; stages batch them by slicing and can
move them to the device once. Image files too large for memory come as streamed splits instead
(:class:`kdcore.data.stream.ImageFileSplit`: the same ``len``, ``y`` and a lazy ``x``), which the
stages batch through a DataLoader.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from kdcore.vision.spec import ImageSpec


@dataclass
class Split:
    """One split: ``x`` the inputs, already normalised (images float32 [N, C, H, W]; speech float32
    [N, T, F + 1] with a validity-mask channel; text int64 token ids [N, T]); ``y`` int64 [N]."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class DataBundle:
    """A dataset held in memory, split and normalised.

    ``mean`` / ``std`` are the per-channel statistics of the TRAIN split (of the [0, 1]-scaled
    pixels); every split was normalised with them, and so must any new input be.
    ``fingerprint`` is a sha256 of the split contents and the split parameters.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]
    input_shape: tuple[int, ...]
    modality: str = "image"
    fingerprint: str = ""
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        """What models are built with as ``in_channels``: image channels, speech features per frame
        (the last input channel is the validity mask), or the text vocabulary size."""
        if self.modality == "speech":
            return int(self.input_shape[-1]) - 1
        if self.modality == "text":
            return len(self.extras["vocab"])
        return int(self.input_shape[0])

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def normalize(self, x: Tensor) -> Tensor:
        """Apply this bundle's normalisation to [0, 1]-scaled images [N, C, H, W], or to speech
        frames [N, T, F + 1] (features only, on valid frames; padding and mask untouched)."""
        if self.modality == "speech":
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device)
            valid = x[..., -1:] > 0.5
            feats = torch.where(valid, (x[..., :-1] - mean) / std, torch.zeros_like(x[..., :-1]))
            return torch.cat([feats, x[..., -1:]], dim=-1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def summary(self) -> dict:
        """A small JSON-serialisable description (for records and logging)."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "modality": self.modality,
            "sizes": {k: len(s) for k, s in self.splits().items()},
            "mean": list(self.mean),
            "std": list(self.std),
            **({"vocab_size": len(self.extras["vocab"])} if "vocab" in self.extras else {}),
        }

    def model_files(self, folder: Path) -> list[Path]:
        """Write what a model trained on this data needs to read raw inputs (text: ``vocab.json``,
        the train-split vocabulary; speech: ``frames.json``, the frame count, normalisation and
        audio front end; images: ``image.json``, size, resizing and normalisation) into ``folder``;
        return the paths written."""
        if "vocab" in self.extras:
            return [self.extras["vocab"].save(Path(folder) / "vocab.json")]
        if "frames" in self.extras:
            return [self.extras["frames"].save(Path(folder) / "frames.json")]
        if self.modality == "image" and len(self.mean) == int(self.input_shape[0]):  # images with train statistics
            return [self.image_spec().save(Path(folder) / "image.json")]
        return []

    def image_spec(self) -> "ImageSpec":
        """How new pictures become this image data's inputs: its size, the train statistics, the
        class names, and the resize of its files (streamed: shorter side and centre crop; in memory:
        straight to the square size)."""
        from kdcore.vision.spec import ImageSpec

        c, h, w = (int(d) for d in self.input_shape)
        streamed = bool(self.extras.get("streaming"))
        resize: Literal["square", "shorter_side_crop"] = "shorter_side_crop" if streamed else "square"
        return ImageSpec(c, h, w, list(self.mean), list(self.std), resize, list(self.class_names))


def channel_stats(x: np.ndarray, scale: float, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of raw images [N, C, H, W] scaled by ``1 / scale``.

    Two passes over chunks in float64 (exact enough, small temporaries). A channel with (near)
    zero spread gets std 1 so that normalising it does not divide by zero.
    """
    n, c = x.shape[0], x.shape[1]
    per_sample = int(np.prod(x.shape[2:]))
    total = np.zeros(c)
    for i in range(0, n, chunk):
        total += x[i : i + chunk].sum(axis=(0, 2, 3), dtype=np.float64)
    mean = total / (n * per_sample) / scale
    sq = np.zeros(c)
    for i in range(0, n, chunk):
        part = x[i : i + chunk].astype(np.float64) / scale - mean.reshape(1, -1, 1, 1)
        sq += np.square(part).sum(axis=(0, 2, 3))
    std = np.sqrt(sq / (n * per_sample))
    std[std < 1e-6] = 1.0
    return mean, std


def to_split(x: np.ndarray, y: np.ndarray, scale: float, mean: np.ndarray, std: np.ndarray) -> Split:
    """Scale raw pixels to [0, 1], normalise with (mean, std) and wrap as tensors."""
    xf = x.astype(np.float32) / np.float32(scale)
    xf -= mean.astype(np.float32).reshape(1, -1, 1, 1)
    xf /= std.astype(np.float32).reshape(1, -1, 1, 1)
    return Split(torch.from_numpy(np.ascontiguousarray(xf)), torch.from_numpy(y.astype(np.int64)))


FINGERPRINT_VERSION = "kdflow-data-v1"


def content_fingerprint(
    name: str, parts: dict[str, tuple[np.ndarray, np.ndarray]], params: dict, scale: float, class_names: list[str]
) -> str:
    """sha256 over the dataset name, the split parameters, the class names and, per split, the
    shape, dtype and raw bytes of the images and labels. Stable across processes and machines."""
    h = hashlib.sha256()

    def put(text: str) -> None:
        b = text.encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    put(FINGERPRINT_VERSION)
    put(name)
    put(json.dumps(params, sort_keys=True, default=str))
    put(json.dumps({"scale": float(scale), "class_names": list(class_names)}))
    for split, (x, y) in parts.items():
        x = np.ascontiguousarray(x)
        y = np.ascontiguousarray(y, dtype="<i8")
        put(f"{split}|{x.dtype.str}|{list(x.shape)}|{list(y.shape)}")
        h.update(x.data.cast("B"))  # the arrays' buffers, as memoryview(x) (contiguous above)
        h.update(y.data.cast("B"))
    return h.hexdigest()
