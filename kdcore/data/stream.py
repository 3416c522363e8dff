"""Image files streamed from disk: decoded lazily, transformed, normalised, batched by a DataLoader.

A streamed split (:class:`ImageFileSplit`) stands where an in-memory :class:`~kdcore.data.bundle.Split`
stands: ``len(split)``, ``split.y`` (labels, small), and ``split.x`` — a lazy sequence whose
``x[i]`` / ``x[a:b]`` decode just those images (eval transform). Stages batch it through
:meth:`ImageFileSplit.dataset` in a ``DataLoader`` with workers: the workers build whole batches of
uint8 images (``__getitems__``) and the stage normalises them after the copy to the device
(``dataset.to_input``, see :func:`kdcore.train.batches.as_input`).

Transforms (``torchvision.io.decode_image`` + ``torchvision.transforms.v2.functional``):

- eval: resize the shorter side to ``image_size``, centre crop ``image_size`` x ``image_size``;
- train view: a random resized crop to ``image_size`` and a horizontal flip (``data.augment``), drawn
  from one integer seed per (sample, view). The crop actually cut — ``(top, left, height, width,
  flip)`` on the decoded image — comes back with the sample, so a teacher cache stores it and the
  student's loader replays the very same crop from it (the FKD approach).

Normalisation uses per-channel statistics of the train split, estimated on a seeded sample of at
most ``STATS_SAMPLE`` images (all of them when the split is smaller: then they equal the in-memory
statistics exactly).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union, cast

import numpy as np
import torch
from torch import Tensor

from kdcore.config import AugmentConfig, DataConfig
from kdcore.data.bundle import DataBundle, Split, channel_stats
from kdcore.data.decoded_store import DecodedImages, build_store, open_store
from kdcore.data.image_files import ImageFiles, decoded_bytes, default_workers, first_image_size
from kdcore.data.registry import check_classes
from kdcore.data.splits import make_splits
from kdcore.errors import DataError

STATS_SAMPLE = 1000
PIL_ONLY = (".bmp",)  # listed image formats that torchvision.io does not decode
NO_CROP = (-1, -1, -1, -1, 0)  # the eval transform (resize + centre crop), no flip
FINGERPRINT_VERSION = "kdflow-stream-v1"

# What a dataset item may be: an index (eval transform), (index, seed) (a train view drawn from the
# seed) or (index, (top, left, height, width, flip)) (a stored crop replayed).
Item = Union[int, tuple[int, int], tuple[int, Sequence[int]]]


def decode(path: str, grayscale: bool) -> Tensor:
    """The image at ``path`` as uint8 [C, H, W] (RGB, or one grey channel)."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import to_dtype

    try:
        img = decode_image(path, mode=ImageReadMode.GRAY if grayscale else ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as exc:
        if Path(path).suffix.lower() not in PIL_ONLY:
            raise DataError(f"cannot read image {path}: {decoder_message(exc)}") from None
        # a format torchvision does not decode (BMP): PIL's pixels, as the in-memory path reads them
        from kdcore.data.imagefolder import pil_pixels

        arr = pil_pixels(path, "L" if grayscale else "RGB")
        return torch.from_numpy((arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)).copy())
    # 16-bit PNGs decode to uint16: their high byte, as 8-bit images (the store and the crops are uint8)
    return img if img.dtype == torch.uint8 else to_dtype(img, torch.uint8, scale=True)


def decoder_message(exc: BaseException) -> str:
    """A decoder error without the C++ source location torchvision puts before its message
    (``decode_image, /path/to/decode_image.cpp:61, Unsupported image file...``)."""
    text = str(exc).strip()
    return re.sub(r"^[\w:]+, \S+\.(?:cpp|h):\d+, ", "", text) or type(exc).__name__


def eval_view(img: Tensor, size: int) -> Tensor:
    """Resize the shorter side to ``size`` and cut the centre ``size`` x ``size``."""
    from torchvision.transforms.v2 import functional as F

    return F.center_crop(F.resize(img, [size], antialias=True), [size, size])


def crop_params(seed: int, height: int, width: int, aug: AugmentConfig) -> tuple[int, int, int, int, int]:
    """The crop ``(top, left, h, w, flip)`` of a train view: a pure function of the seed and the
    image size. Follows RandomResizedCrop's rule (area in ``aug.scale``, log-uniform aspect ratio in
    ``aug.ratio``, ten tries, then the central crop of the nearest ratio); ``aug.crop`` false gives
    the eval crop (-1s) with only the flip drawn."""
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    box: Optional[tuple[int, int, int, int]] = None
    if aug.crop:
        area = height * width
        log_ratio = (math.log(aug.ratio[0]), math.log(aug.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(aug.scale[0], aug.scale[1])
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
                break
        if box is None:
            ratio = width / height
            if ratio < aug.ratio[0]:
                w, h = width, int(round(width / aug.ratio[0]))
            elif ratio > aug.ratio[1]:
                h, w = height, int(round(height * aug.ratio[1]))
            else:
                w, h = width, height
            box = ((height - h) // 2, (width - w) // 2, h, w)
    flip = int(aug.flip and rng.uniform() < 0.5)
    return (*(box or NO_CROP[:4]), flip)


def resized_crop(img: Tensor, top: int, left: int, h: int, w: int, size: int) -> Tensor:
    """``torchvision.transforms.v2.functional.resized_crop(img, top, left, h, w, [size, size],
    antialias=True)`` of a uint8 [C, H, W] image, the same pixels (tests/kdcore/test_streaming.py
    checks it), with the one torch call it comes down to on the CPU: bilinear, antialiased, on the
    cut in channels-last layout (a third less time per image than through the transforms' dispatch)."""
    cut = img[None, :, top : top + h, left : left + w].contiguous(memory_format=torch.channels_last)
    if (h, w) == (size, size):
        return cut[0].contiguous()
    out = torch.nn.functional.interpolate(cut, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].contiguous()


def apply_crop(img: Tensor, crop: Sequence[int], size: int) -> Tensor:
    """The view of ``img`` given by ``crop`` = (top, left, h, w, flip) (top -1: the eval view)."""
    top, left, h, w, flip = (int(c) for c in crop)
    out = eval_view(img, size) if top < 0 else resized_crop(img, top, left, h, w, size)
    return out.flip(-1) if flip else out


def normalise(img: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 [C, H, W] (or a batch) -> float32 scaled to [0, 1] and normalised: the in-memory
    arithmetic ``(x / 255 - mean) / std``, in place on the one new float tensor."""
    return img.float().div_(255.0).sub_(mean).div_(std)


@dataclass
class ImageFileDataset:
    """``dataset[item]`` -> ``{"idx", "x", "y", "crop"}`` for one image of a split (see ``Item``)."""

    paths: list[str]
    labels: np.ndarray
    size: int
    grayscale: bool
    mean: list[float]
    std: list[float]
    augment: AugmentConfig
    store: Optional[DecodedImages] = None  # the split's decoded pixels (data.decoded_store), else decode files

    def __post_init__(self) -> None:
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def view(self, item: Item) -> tuple[int, Tensor, tuple[int, ...]]:
        """(index, the uint8 view [C, S, S], the crop it was cut with) of one item."""
        i, view = (item, None) if isinstance(item, (int, np.integer)) else item
        img = self.store.read(int(i)) if self.store is not None else decode(self.paths[int(i)], self.grayscale)
        crop: tuple[int, ...]
        if view is None:
            crop = NO_CROP
        elif isinstance(view, (int, np.integer)):
            crop = crop_params(int(view), int(img.shape[-2]), int(img.shape[-1]), self.augment)
        else:
            crop = tuple(int(c) for c in view)
        return int(i), apply_crop(img, crop, self.size), crop

    def __getitem__(self, item: Item) -> dict[str, Tensor]:
        i, img, crop = self.view(item)
        return {
            "idx": torch.tensor(i),
            "x": normalise(img, self._mean, self._std),
            "y": torch.tensor(int(self.labels[i])),
            "crop": torch.tensor(crop, dtype=torch.int64),
        }

    def __getitems__(self, items: Sequence[Item]) -> dict[str, Tensor]:
        """A whole batch, as a DataLoader with a batch sampler asks for it (no per-sample collation):
        ``x`` stays uint8 [B, C, S, S] — a quarter of the bytes through the workers' shared memory —
        and :meth:`to_input` normalises it where it is used (on the device)."""
        views = [self.view(item) for item in items]
        idx = [v[0] for v in views]
        return {
            "idx": torch.tensor(idx, dtype=torch.int64),
            "x": torch.stack([v[1] for v in views]),
            "y": torch.as_tensor(self.labels[idx], dtype=torch.int64),
            "crop": torch.tensor([v[2] for v in views], dtype=torch.int64),
        }

    def to_input(self, x: Tensor) -> Tensor:
        """A uint8 batch from :meth:`__getitems__` as the model's input, normalised with the
        arithmetic of a single item's (bit for bit the same values), on ``x``'s device."""
        if x.dtype != torch.uint8:
            return x
        return normalise(x, self._mean.to(x.device), self._std.to(x.device))


class LazyImages:
    """``split.x`` of a streamed split: ``len``, ``shape``, and indexing that decodes only the
    images asked for (eval transform): ``x[i]`` -> [C, S, S], ``x[a:b]`` / ``x[index]`` -> [B, C, S, S]."""

    def __init__(self, dataset: ImageFileDataset, num_workers: int = 0) -> None:
        self.dataset, self.num_workers = dataset, num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> tuple[int, ...]:
        c = 1 if self.dataset.grayscale else 3
        return (len(self.dataset), c, self.dataset.size, self.dataset.size)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, (int, np.integer)):
            return self.dataset[int(key) % len(self)]["x"]
        rows: Sequence[int]
        if isinstance(key, slice):
            rows = range(*key.indices(len(self)))
        else:
            rows = torch.as_tensor(key).reshape(-1).tolist()
        return torch.stack([self.dataset[int(i)]["x"] for i in rows]) if rows else torch.empty(0, *self.shape[1:])


@dataclass
class ImageFileSplit:
    """A split streamed from files (see the module doc)."""

    paths: list[str]
    y: Tensor
    size: int
    grayscale: bool
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 0
    store: Optional[DecodedImages] = None

    def __len__(self) -> int:
        return len(self.paths)

    def dataset(self) -> ImageFileDataset:
        return ImageFileDataset(
            self.paths, self.y.numpy(), self.size, self.grayscale, self.mean, self.std, self.augment, self.store
        )

    @property
    def x(self) -> LazyImages:
        return LazyImages(self.dataset(), self.num_workers)


def is_streamed(split: Any) -> bool:
    return isinstance(split, ImageFileSplit)


def _sample_stats(paths: list[str], size: int, grayscale: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train statistics on at most STATS_SAMPLE images (eval view), with in-memory arithmetic."""
    rows = np.arange(len(paths))
    if len(rows) > STATS_SAMPLE:
        rows = np.sort(np.random.default_rng(seed).choice(rows, STATS_SAMPLE, replace=False))
    sample = np.stack([eval_view(decode(paths[i], grayscale), size).numpy() for i in rows])
    return channel_stats(sample, 255.0)


def files_fingerprint(
    cfg: DataConfig,
    splits: dict[str, list[str]],
    labels: dict[str, np.ndarray],
    class_names: list[str],
    params: dict[str, Any],
) -> str:
    """sha256 over the dataset settings and, per split, each file's path, label and size + mtime
    (``data.fingerprint: stat``) or content sha256 (``content``)."""
    from kdcore.fingerprint import file_sha256

    h = hashlib.sha256()

    def put(text: str) -> None:
        b = text.encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    put(FINGERPRINT_VERSION)
    put(json.dumps({"name": cfg.name, "params": params, "classes": class_names}, sort_keys=True, default=str))
    for split, paths in splits.items():
        put(f"{split}|{len(paths)}")
        for p, label in zip(paths, labels[split].tolist()):
            if cfg.fingerprint == "content":
                put(f"{p}|{label}|{file_sha256(p)}")
            else:
                st = os.stat(p)
                put(f"{p}|{label}|{st.st_size}|{st.st_mtime_ns}")
    return h.hexdigest()


def store_root(cfg: DataConfig) -> Path:
    from kdcore.data.registry import data_home

    return Path(cfg.decoded_store_dir).expanduser() if cfg.decoded_store_dir else data_home() / "decoded"


def use_decoded_store(cfg: DataConfig, files: ImageFiles, count: int) -> bool:
    """``data.decoded_store`` resolved: auto writes the store when its size, estimated from the first
    image, is within ``data.decoded_store_budget`` and half the free disk where it goes."""
    if cfg.decoded_store != "auto":
        return bool(cfg.decoded_store)
    h, w = first_image_size(files.train_paths[0])
    size = count * files.channels * h * w
    root = store_root(cfg)
    probe = next((p for p in (root, *root.parents) if p.exists()), Path("."))
    return size <= int(cfg.decoded_store_budget) and size <= shutil.disk_usage(probe).free // 2


class _DecodeFiles:
    """The decoded files, a batch of them per DataLoader request (for the workers that build the store)."""

    def __init__(self, paths: list[str], grayscale: bool) -> None:
        self.paths, self.grayscale = paths, grayscale

    def __len__(self) -> int:
        return len(self.paths)

    def __getitems__(self, rows: Sequence[int]) -> list[Union[Tensor, str]]:
        """The images; a file that cannot be read comes back as its message (raised by the main
        process as it is, not wrapped in the worker's traceback)."""
        out: list[Union[Tensor, str]] = []
        for i in rows:
            try:
                out.append(decode(self.paths[i], self.grayscale))
            except DataError as exc:
                out.append(str(exc))
        return out


def _decoded(paths: list[str], grayscale: bool, workers: int):
    """The images of ``paths`` decoded, in order, by ``workers`` DataLoader processes."""
    from kdcore.train.batches import make_loader

    chunks = [range(a, min(a + 64, len(paths))) for a in range(0, len(paths), 64)]
    for batch in make_loader(_DecodeFiles(paths, grayscale), chunks, workers, torch.device("cpu")):
        for img in batch:
            if isinstance(img, str):
                raise DataError(img)
            yield img


def stream_bundle(cfg: DataConfig, files: ImageFiles) -> DataBundle:
    """Split ``files`` like the in-memory path does, estimate the normalisation, fingerprint the
    file list; nothing is decoded beyond the statistics sample."""
    check_classes(cfg.name, files.train_y, files.class_names, f" (read from {files.source})" if files.source else "")
    test_y = files.test_y
    idx = make_splits(cfg.name, files.train_y, len(test_y) if test_y is not None else None, cfg)
    pool = np.asarray(files.train_paths, dtype=object)
    test_pool, test_labels = pool, files.train_y
    if idx.test_is_official:
        assert test_y is not None  # make_splits has an official test set only when given its size
        test_pool, test_labels = np.asarray(files.test_paths, dtype=object), test_y
    parts = idx.take(pool, files.train_y, test_pool, test_labels)
    _, size = decoded_bytes(files, cfg.image_size)
    train_paths = [str(p) for p in parts["train"][0]]
    mean, std = _sample_stats(train_paths, size, files.grayscale, cfg.split_seed)
    params = {
        **idx.params(cfg),
        "image_size": size,
        "grayscale": files.grayscale,
        "augment": cfg.augment.model_dump(mode="json"),
        "fingerprint": cfg.fingerprint,
    }
    fingerprint = files_fingerprint(
        cfg,
        {k: [str(p) for p in v[0]] for k, v in parts.items()},
        {k: v[1] for k, v in parts.items()},
        files.class_names,
        params,
    )
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
    paths = {k: [str(p) for p in v[0]] for k, v in parts.items()}
    stores: dict[str, Optional[DecodedImages]] = dict.fromkeys(parts)
    if use_decoded_store(cfg, files, sum(len(v) for v in paths.values())):
        folder = build_store(
            store_root(cfg),
            fingerprint,
            {k: len(v) for k, v in paths.items()},
            lambda split: _decoded(paths[split], files.grayscale, workers),
        )
        stores = {k: open_store(folder, k) for k in parts}
    splits = {
        k: ImageFileSplit(
            [str(p) for p in paths],
            torch.from_numpy(np.asarray(y, dtype=np.int64)),
            size,
            files.grayscale,
            [float(m) for m in mean],
            [float(s) for s in std],
            cfg.augment,
            workers,
            stores[k],
        )
        for k, (paths, y) in parts.items()
    }
    # an ImageFileSplit stands where a Split is expected (same len, y and an indexable x; see bundle.py)
    train, val, test = (cast(Split, splits[k]) for k in ("train", "val", "test"))
    return DataBundle(
        name=cfg.name,
        train=train,
        val=val,
        test=test,
        num_classes=len(files.class_names),
        class_names=list(files.class_names),
        input_shape=(files.channels, size, size),
        modality="image",
        fingerprint=fingerprint,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        extras={
            "streaming": True,
            "num_workers": workers,
            "source": files.source,
            "decoded_store": str(stores["train"].pixels.parent) if stores["train"] is not None else None,
        },
    )
