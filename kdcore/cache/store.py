"""The teacher feature cache: one content-addressed directory per entry.

An entry holds, for each split it covers, the teacher's logits and the captured intermediate
features as ``.npy`` arrays (memory-mapped on read) plus ``manifest.json`` describing the key,
shapes, dtypes and the sha256 of every file. Entries are written into a temporary directory and
renamed into place when complete; a file lock makes concurrent builders of one key produce one
entry.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from filelock import FileLock

import kdcore
from kdcore.errors import KdflowError
from kdcore.fingerprint import file_sha256, stable_hash

STORAGE = {"float32": (np.float32, torch.float32), "float16": (np.float16, torch.float16),
           "bfloat16": (np.uint16, torch.bfloat16)}  # numpy has no bf16: its bits are kept as uint16


class CacheError(KdflowError):
    """A cache entry is missing, truncated or corrupted."""


def cache_key(teacher_sha256: str, data_fingerprint: str, splits: Iterable[str], paths: Iterable[str],
              dtype: str, views: dict[str, Any] | None = None) -> str:
    return stable_hash({
        "teacher": teacher_sha256, "data": data_fingerprint, "splits": sorted(splits),
        "paths": list(paths), "dtype": dtype, "views": views or {"augment": None, "num_views": 1},
    })


def tensor_file(split: str, name: str) -> str:
    return f"{split}.{name.replace('/', '_')}.npy"


@dataclass
class CacheEntry:
    root: Path
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return self.manifest["key"]

    def names(self) -> list[str]:
        return ["logits", *self.manifest["paths"]]

    def array(self, split: str, name: str) -> np.ndarray:
        return np.load(self.root / tensor_file(split, name), mmap_mode="r")

    def tensor(self, split: str, name: str, index: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``index`` (all when None) of one stored tensor, as float32."""
        arr = self.array(split, name)
        rows = np.array(arr) if index is None else arr[index.cpu().numpy()]
        t = torch.from_numpy(np.ascontiguousarray(rows))
        if self.manifest["dtype"] == "bfloat16":
            t = t.view(torch.bfloat16)
        return t.float()

    def load_split(self, split: str) -> dict[str, torch.Tensor]:
        return {name: self.tensor(split, name) for name in self.names()}

    def touch(self) -> None:
        (self.root / "last_used").write_text(str(time.time()))

    def verify(self, checksums: bool = False) -> None:
        """Check files against the manifest (sizes always; sha256 when ``checksums``)."""
        for fname, info in self.manifest["files"].items():
            path = self.root / fname
            if not path.is_file():
                raise CacheError(f"cache entry {self.root} is missing {fname}")
            if path.stat().st_size != info["bytes"]:
                raise CacheError(
                    f"cache entry {self.root}: {fname} is truncated or altered "
                    f"({path.stat().st_size} bytes, manifest says {info['bytes']})")
            if checksums and file_sha256(path) != info["sha256"]:
                raise CacheError(f"cache entry {self.root}: {fname} fails its sha256 check (corrupted)")


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        raise CacheError(f"cache entry {root} has no manifest.json") from None
    except json.JSONDecodeError as exc:
        raise CacheError(f"cache entry {root} has a corrupted manifest.json ({exc})") from None


def open_entry(cache_dir: Path, key: str, checksums: bool = False) -> CacheEntry:
    root = Path(cache_dir) / key[:24]
    entry = CacheEntry(root, _read_manifest(root))
    if entry.manifest.get("key") != key:
        raise CacheError(f"cache entry {root} belongs to another key")
    entry.verify(checksums=checksums)
    return entry


Producer = Callable[[str], Iterator[dict[str, torch.Tensor]]]


def build_entry(cache_dir: Path, key: str, meta: dict[str, Any], splits: dict[str, int], produce: Producer,
                dtype: str = "float32", rebuild: bool = True, checksums: bool = False) -> tuple[CacheEntry, bool]:
    """Return (entry, built): reuse a valid entry for ``key`` or build it.

    ``produce(split)`` yields batches ``{name: tensor[B, ...]}`` in sample order; ``splits`` maps
    each split to its sample count. At most one batch is held in memory beyond the memory maps.
    A damaged existing entry is rebuilt when ``rebuild`` else reported.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    root = cache_dir / key[:24]
    with FileLock(str(cache_dir / f".{key[:24]}.lock")):
        if root.exists():
            try:
                entry = open_entry(cache_dir, key, checksums=checksums)
                entry.touch()
                return entry, False
            except CacheError as exc:
                if not rebuild:
                    raise CacheError(f"{exc}; rebuilding is disabled") from None
                shutil.rmtree(root)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".build-{key[:12]}-"))
        try:
            manifest = _write_arrays(tmp, key, meta, splits, produce, dtype)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = CacheEntry(root, manifest)
        entry.touch()
        return entry, True


def _write_arrays(tmp: Path, key: str, meta: dict[str, Any], splits: dict[str, int], produce: Producer,
                  dtype: str) -> dict[str, Any]:
    np_dtype, torch_dtype = STORAGE[dtype]
    shapes: dict[str, list[int]] = {}
    files: dict[str, dict[str, Any]] = {}
    for split, count in splits.items():
        maps: dict[str, np.memmap] = {}
        pos = 0
        for batch in produce(split):
            b = next(iter(batch.values())).shape[0]
            for name, t in batch.items():
                if name not in maps:
                    shapes[name] = list(t.shape[1:])
                    maps[name] = np.lib.format.open_memmap(
                        tmp / tensor_file(split, name), mode="w+", dtype=np_dtype, shape=(count, *t.shape[1:]))
                out = t.detach().to("cpu", torch_dtype)
                maps[name][pos:pos + b] = (out.view(torch.uint16) if dtype == "bfloat16" else out).numpy()
            pos += b
        if pos != count:
            raise CacheError(f"cache build for split {split!r} produced {pos} samples, expected {count}")
        for name, mm in maps.items():
            mm.flush()
            del mm
            fname = tensor_file(split, name)
            files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": file_sha256(tmp / fname)}
    return {"key": key, **meta, "dtype": dtype, "splits": splits, "shapes": shapes, "files": files,
            "created": time.time(), "kdflow_version": kdcore.__version__}
