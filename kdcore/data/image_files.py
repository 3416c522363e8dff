"""Image datasets that are lists of files: what ``imagefolder`` and ``image_csv`` find on disk.

Both layouts become an :class:`ImageFiles` (paths, labels, class names). From there the data is
either read whole into memory (small sets, today's path) or streamed (:mod:`kdcore.data.stream`):
``data.in_memory: auto`` compares the decoded float32 size with ``data.memory_budget``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from kdcore.config import DataConfig
from kdcore.errors import DataError


@dataclass
class ImageFiles:
    """The files of an image dataset: a train pool and, when the source has one, a test set."""

    train_paths: list[str]
    train_y: np.ndarray
    class_names: list[str]
    test_paths: Optional[list[str]] = None
    test_y: Optional[np.ndarray] = None
    source: str = ""
    grayscale: bool = False

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3


# name -> fn(cfg) -> ImageFiles, for the datasets that can stream
IMAGE_FILES: dict[str, Callable[[DataConfig], ImageFiles]] = {}


def lists_files(name: str):
    def add(fn):
        IMAGE_FILES[name] = fn
        return fn

    return add


def first_image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    return h, w


def decoded_bytes(files: ImageFiles, image_size: Optional[int]) -> tuple[int, int]:
    """(estimated bytes of every image as float32 tensors in memory, the side used)."""
    if image_size is None:
        h, w = first_image_size(files.train_paths[0])
        side_h, side_w = h, w
    else:
        side_h = side_w = image_size
    n = len(files.train_paths) + len(files.test_paths or [])
    return n * files.channels * side_h * side_w * 4, image_size or min(side_h, side_w)


def keep_in_memory(cfg: DataConfig, files: ImageFiles) -> bool:
    """``data.in_memory`` resolved: true / false as given, auto by the decoded size and the budget."""
    if cfg.in_memory != "auto":
        return bool(cfg.in_memory)
    size, _ = decoded_bytes(files, cfg.image_size)
    return size <= int(cfg.memory_budget)


def default_workers() -> int:
    """DataLoader workers when ``data.num_workers`` is not set: one per CPU but one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))
