"""Decode image files once: a store of decoded uint8 pixels on disk, read back with ``pread``.

A streamed split decodes every image it reads (``torchvision.io.decode_image``), every epoch, in
every stage: for small images the decoding is most of a worker's time. With ``data.decoded_store``
on, the first load of a dataset decodes each split's files once into two files under
``<data.decoded_store_dir, default $KDFLOW_HOME/data/decoded>/<data fingerprint>/``:

- ``<split>.u8``: the images' pixels as decoded (uint8, [C, H, W] each, at the file's own size),
  one after the other;
- ``<split>.index.npy``: per image, (byte offset, C, H, W).

Later reads take the bytes of one image with ``os.pread`` (no memory map: the pages stay in the
kernel's page cache, not in the process's resident memory) and give the same tensor the decoder
gives, bit for bit — so the store changes no result and stays out of every stage's fingerprint.
It is keyed by the data fingerprint (file list, sizes and mtimes or contents): edited files make a
new store. Building writes into a temporary folder renamed into place once complete, under a lock
file, so processes that load the dataset at the same time build it once and never read a half-written one.

Every load that finds a store marks it used (the ``complete`` file's modification time);
``list_stores`` and ``remove_stores`` (``kdflow cache ls`` / ``kdflow cache gc --decoded``) read that
to remove stores nobody has loaded for a while, or the least recently used beyond a size.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, cast

import numpy as np
import torch
from torch import Tensor

from kdcore.retention import to_remove

FORMAT = "kdflow-decoded-v1"


class DecodedImages:
    """The decoded images of one split, read one at a time (picklable: DataLoader workers open
    their own file handle)."""

    def __init__(self, pixels: Path, index: np.ndarray) -> None:
        self.pixels, self.index = Path(pixels), index
        self._fd: Optional[int] = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {"pixels": self.pixels, "index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["pixels"], state["index"])  # type: ignore[misc]

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.pixels, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, i: int) -> Tensor:
        """Image ``i`` as uint8 [C, H, W], exactly as decoded."""
        offset, c, h, w = (int(v) for v in self.index[i])
        out = torch.empty((c, h, w), dtype=torch.uint8)
        got = os.preadv(self._handle(), [cast(Any, out.numpy())], offset)  # straight into the tensor (a numpy buffer)
        if got != out.numel():
            raise OSError(f"{self.pixels}: short read of image {i} ({got} of {out.numel()} bytes)")
        return out

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


def open_store(folder: Path, split: str) -> DecodedImages:
    return DecodedImages(folder / f"{split}.u8", np.load(folder / f"{split}.index.npy"))


def _write_split(folder: Path, split: str, count: int, images: Iterable[Tensor]) -> None:
    index = np.zeros((count, 4), dtype=np.int64)
    offset, n = 0, 0
    with open(folder / f"{split}.u8", "wb") as fh:
        for img in images:
            c, h, w = img.shape
            index[n] = (offset, c, h, w)
            fh.write(img.contiguous().numpy().tobytes())
            offset += c * h * w
            n += 1
    if n != count:
        raise OSError(f"decoded store: {split} gave {n} images, expected {count}")
    np.save(folder / f"{split}.index.npy", index)


def build_store(
    root: Path,
    fingerprint: str,
    splits: dict[str, int],
    images: Callable[[str], Iterable[Tensor]],
) -> Path:
    """The store of ``fingerprint`` (built now if missing): ``splits`` maps each split to its number
    of images, ``images(split)`` yields them decoded, in order. Safe against concurrent builders."""
    folder = Path(root) / fingerprint
    if _mark_used(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _locked(folder):  # a second builder waits here, then finds the store complete
        if _mark_used(folder):
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{fingerprint}-", dir=folder.parent))
        try:
            for split, count in splits.items():
                _write_split(tmp, split, count, images(split))
            (tmp / "complete").write_text(FORMAT)
            if folder.exists():  # an incomplete leftover of a killed build
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _mark_used(folder: Path) -> bool:
    """Whether ``folder`` holds a complete store; if so, note that it was used now."""
    done = folder / "complete"
    if not done.is_file():
        return False
    try:
        os.utime(done)
    except OSError:  # a store someone else owns, or on a read-only disk: used as it is
        pass
    return True


class _locked:
    """The store's build lock (``.<fingerprint>.lock`` beside it), held exclusively for the block."""

    def __init__(self, folder: Path) -> None:
        self.path = folder.parent / f".{folder.name}.lock"

    def __enter__(self) -> None:
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


@dataclass(frozen=True)
class StoreInfo:
    folder: Path
    splits: dict[str, int]  # split -> images
    size_bytes: int
    last_used: float  # seconds since the epoch

    @property
    def id(self) -> str:
        return self.folder.name  # the data fingerprint


def list_stores(root: Path) -> list[StoreInfo]:
    """The complete stores under ``root``, least recently used first."""
    out = []
    for folder in Path(root).iterdir() if Path(root).is_dir() else []:
        done = folder / "complete"
        if folder.name.startswith(".") or not done.is_file():
            continue
        files = [f for f in folder.iterdir() if f.is_file()]
        splits = {
            f.name.removesuffix(".index.npy"): len(np.load(f, mmap_mode="r"))
            for f in sorted(files)
            if f.name.endswith(".index.npy")
        }
        out.append(StoreInfo(folder, splits, sum(f.stat().st_size for f in files), _last_used(folder) or 0.0))
    return sorted(out, key=lambda s: s.last_used)


def remove_stores(
    root: Path, keep_days: Optional[float] = None, max_size: Optional[int] = None, dry_run: bool = False
) -> list[StoreInfo]:
    """Remove stores unused for ``keep_days``, then the least recently used until those left hold at
    most ``max_size`` bytes, each under its build lock; also what killed builds left (a build still
    running holds its lock and is left alone; a store loaded since it was listed stays). A store removed
    is decoded again by the next load that wants it. Returns what was (or, ``dry_run``, would be) removed."""
    removed = to_remove(list_stores(root), lambda s: s.last_used, lambda s: s.size_bytes, keep_days, max_size)
    if dry_run:
        return removed
    gone: list[StoreInfo] = []
    for store in removed:
        with _locked(store.folder):
            if _last_used(store.folder) == store.last_used:  # not loaded since it was listed
                shutil.rmtree(store.folder, ignore_errors=True)
                gone.append(store)
    for left in Path(root).glob(".*-*") if Path(root).is_dir() else []:  # build_store's temporary folders
        fingerprint = left.name[1:].rsplit("-", 1)[0]
        if left.is_dir() and not _building(Path(root) / fingerprint):  # its builder was killed
            shutil.rmtree(left, ignore_errors=True)
    return gone


def _last_used(folder: Path) -> Optional[float]:
    try:
        return (folder / "complete").stat().st_mtime
    except OSError:
        return None


def _building(folder: Path) -> bool:
    """Whether a process holds the build lock of ``folder``'s store now."""
    path = folder.parent / f".{folder.name}.lock"
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False
