"""The teacher feature cache: one content-addressed directory per (teacher, data, split, views...).

An entry holds the teacher's logits and captured intermediate features for every (sample, view)
as ``.npy`` arrays shaped ``[N, V, ...]`` (read into memory once when small, memory-mapped when
large: :func:`memory_limit`), the seed of every view (``view_seeds.npy``, so the student replays
exactly the image the teacher saw), for mixed views the partner, coefficient and box of every view
(``mix_partner``, ``mix_lam``, ``mix_box``), and
``manifest.json``: key fields, shapes, dtypes, sample count, per-file size and sha256, creation
time, kdflow version. Entries are built in a temporary directory renamed into place when
complete; a file lock makes concurrent builders of one key produce one entry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from filelock import FileLock

import kdcore
from kdcore.errors import KdflowError
from kdcore.fingerprint import file_sha256, stable_hash
from kdcore.retention import to_remove

STORAGE = {
    "float32": (np.float32, torch.float32),
    "float16": (np.float16, torch.float16),
    "bfloat16": (np.uint16, torch.bfloat16),
}  # numpy has no bf16: its bits are kept as uint16
MISSING_LOGIT = -1e4  # logits outside the stored top-k: softmax gives them exactly 0 in float32
SEEDS = "view_seeds"
CROPS = "view_crops"  # streamed images: the (top, left, h, w, flip) each view was cut with, int32 [N, V, 5]
MIXING = ("mix_partner", "mix_lam", "mix_box")  # mixed views: kdcore.data.augment.mix_params's arrays


class CacheError(KdflowError):
    """A cache entry is missing, truncated or corrupted."""


def key_fields(
    teacher_sha256: str,
    data_fingerprint: str,
    split: str,
    views: dict[str, Any],
    dtype: str,
    topk: Optional[int] = None,
    precision: str = "float32",
) -> dict[str, Any]:
    """Everything but the captured paths that determines an entry. ``precision``: the teacher's
    forward while building (float32, or bfloat16 / float16 under autocast, "+channels_last" for an
    NHWC teacher); keyed only when not float32, so entries built before the setting keep their keys."""
    fields = {
        "teacher_sha256": teacher_sha256,
        "data_fingerprint": data_fingerprint,
        "split": split,
        "views": views,
        "dtype": dtype,
        "topk": topk,
    }
    if precision != "float32":
        fields["precision"] = precision
    return fields


def cache_key(fields: dict[str, Any], paths: list[str]) -> str:
    return stable_hash(fields, list(paths))


def entry_id(key: str) -> str:
    return key[:24]


def _fname(name: str) -> str:
    return f"{name.replace('/', '_')}.npy"


MEMORY_LIMIT_ENV = "KDFLOW_CACHE_IN_MEMORY_BYTES"


def memory_limit() -> int:
    """The largest stored array (bytes) an entry reads into memory, once, rather than memory-mapping:
    ``$KDFLOW_CACHE_IN_MEMORY_BYTES`` if set, else 1/16 of the machine's RAM, at most 2 GiB. A training
    step then gathers its rows from memory instead of touching (and faulting in) pages of a map."""
    value = os.environ.get(MEMORY_LIMIT_ENV)
    if value:
        try:
            return max(int(value), 0)
        except ValueError:
            raise CacheError(f"{MEMORY_LIMIT_ENV} must be a number of bytes, got {value!r}") from None
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf: keep to the maps
        return 0
    return min(ram // 16, 2 << 30)


@dataclass
class CacheEntry:
    """An entry on disk. ``memory_limit``: arrays of at most this many bytes are read into memory on
    first use, larger ones memory-mapped (None: :func:`memory_limit`; 0: always mapped). Either way
    each array is opened once per entry object and the values read are the same."""

    root: Path
    manifest: dict[str, Any]
    memory_limit: Optional[int] = None
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (e.g. to DDP ranks) without the opened arrays: each process opens its own."""
        return {**self.__dict__, "_arrays": {}}

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def id(self) -> str:
        return self.root.name

    @property
    def num_views(self) -> int:
        return int(self.manifest["num_views"])

    @property
    def paths(self) -> list[str]:
        return list(self.manifest["paths"])

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v) for k, v in self.manifest["shapes"].items()}

    def _array(self, name: str) -> np.ndarray:
        """A stored array, opened on first use: in memory when small enough, else memory-mapped."""
        arr = self._arrays.get(name)
        if arr is None:
            path = self.root / _fname(name)
            limit = memory_limit() if self.memory_limit is None else self.memory_limit
            arr = np.load(path) if path.stat().st_size <= limit else np.load(path, mmap_mode="r")
            self._arrays[name] = arr
        return arr

    def held_in_memory(self, name: str) -> bool:
        """Whether the stored array ``name`` is read from memory (False: from a memory map)."""
        return not isinstance(self._array(name), np.memmap)

    def rows_view(self, name: str) -> Optional[torch.Tensor]:
        """A stored array held in memory as a tensor of rows ``[N * V, ...]`` sharing its memory
        (float32, or bfloat16 as stored: gathered rows need :meth:`Tensor.float`), or None where
        rows cannot be gathered from it as they are (a memory map; top-k logits)."""
        if name == "logits" and self.manifest.get("topk"):
            return None
        arr = self._array(name)
        if isinstance(arr, np.memmap) or not arr.flags.c_contiguous:
            return None
        t = torch.from_numpy(arr)
        if self.manifest["dtype"] == "bfloat16":
            t = t.view(torch.bfloat16)
        return t.reshape(-1, *arr.shape[2:])

    def _as_float(self, rows: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(rows))
        if self.manifest["dtype"] == "bfloat16":
            t = t.view(torch.bfloat16)
        return t.float()

    def read(self, name: str, index: torch.Tensor, views: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows ``index`` of a stored tensor (``logits`` or a module path) at the given views, float32."""
        i = index.cpu().numpy()
        v = np.zeros_like(i) if views is None else views.cpu().numpy()
        if name == "logits" and self.manifest.get("topk"):
            values = self._as_float(self._array("logits.values")[i, v])
            indices = torch.from_numpy(np.ascontiguousarray(self._array("logits.indices")[i, v])).long()
            out = torch.full((len(i), self.manifest["num_classes"]), MISSING_LOGIT)
            return out.scatter_(1, indices, values)
        return self._as_float(self._array(name)[i, v])

    def read_all(self, name: str) -> torch.Tensor:
        """A whole stored tensor ``[N, V, ...]`` (logits reconstructed when top-k compressed)."""
        n, views = self.manifest["count"], self.num_views
        idx = torch.arange(n).repeat_interleave(views)
        vs = torch.arange(views).repeat(n)
        flat = self.read(name, idx, vs)
        return flat.reshape(n, views, *flat.shape[1:])

    def seeds(self) -> np.ndarray:
        return np.load(self.root / _fname(SEEDS))

    def mixing(self) -> Optional[dict[str, np.ndarray]]:
        """The stored mixing arrays of the views (partner, coefficient, cutmix box), None unmixed."""
        out = {name: np.load(self.root / _fname(name)) for name in MIXING if _fname(name) in self.manifest["files"]}
        return out or None

    def view_crops(self) -> Optional[np.ndarray]:
        """The crop of every (sample, view) when the teacher saw streamed images, else None."""
        if _fname(CROPS) not in self.manifest["files"]:
            return None
        return self._array(CROPS)

    def touch(self) -> None:
        try:
            (self.root / "last_used").write_text(str(time.time()))
        except OSError:
            pass  # a read-only cache is still usable

    def last_used(self) -> float:
        try:
            return float((self.root / "last_used").read_text())
        except (OSError, ValueError):
            return float(self.manifest.get("created", 0))

    def size_bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.manifest["files"].values())

    def verify(self, checksums: bool = False) -> None:
        """Check every file against the manifest: size always, sha256 when ``checksums``."""
        for fname, info in self.manifest["files"].items():
            path = self.root / fname
            if not path.is_file():
                raise CacheError(f"cache entry {self.root} is missing {fname}")
            size = path.stat().st_size
            if size != info["bytes"]:
                raise CacheError(
                    f"cache entry {self.root}: {fname} is truncated or altered "
                    f"({size} bytes, the manifest says {info['bytes']})"
                )
            if checksums and file_sha256(path) != info["sha256"]:
                raise CacheError(f"cache entry {self.root}: {fname} fails its sha256 check (corrupted)")


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "manifest.json").read_text())
    except FileNotFoundError:
        raise CacheError(f"cache entry {root} has no manifest.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"cache entry {root} has a corrupted manifest.json ({exc})") from None


def open_entry(cache_dir: Path, key: str, checksums: bool = False) -> CacheEntry:
    """Open and check the entry for ``key`` (CacheError if absent or damaged)."""
    root = Path(cache_dir) / entry_id(key)
    if not root.is_dir():
        raise CacheError(f"cache entry {root} does not exist (was the cache cleared?)")
    entry = CacheEntry(root, _read_manifest(root))
    if entry.manifest.get("key") != key:
        raise CacheError(f"cache entry {root} belongs to another key")
    entry.verify(checksums=checksums)
    return entry


def list_entries(cache_dir: Path) -> list[CacheEntry]:
    """Every entry with a readable manifest (damaged ones are listed by ``scan_damaged``)."""
    out = []
    for root in sorted(Path(cache_dir).glob("*")):
        if root.is_dir() and not root.name.startswith("."):
            try:
                out.append(CacheEntry(root, _read_manifest(root)))
            except CacheError:
                continue
    return out


def find_covering(
    cache_dir: Path, fields: dict[str, Any], paths: list[str], checksums: bool = False
) -> Optional[CacheEntry]:
    """An intact entry with the same key fields whose captured paths include ``paths``."""
    for entry in list_entries(cache_dir):
        m = entry.manifest
        if m.get("fields") == fields and set(paths) <= set(m.get("paths", [])):
            try:
                entry.verify(checksums=checksums)
            except CacheError:
                continue
            return entry
    return None


Producer = Callable[[], Iterator[dict[str, torch.Tensor]]]


def build_entry(
    cache_dir: Path,
    fields: dict[str, Any],
    paths: list[str],
    count: int,
    num_views: int,
    seeds: np.ndarray,
    produce: Producer,
    *,
    rebuild: bool = True,
    checksums: bool = False,
    num_classes: Optional[int] = None,
    arrays: Optional[dict[str, np.ndarray]] = None,
) -> tuple[CacheEntry, bool]:
    """Return (entry, built): reuse an intact entry covering ``fields``/``paths`` or build one.

    ``produce()`` yields batches ``{"logits": [B, V, K], path: [B, V, ...]}`` (and, for streamed
    images, ``view_crops`` [B, V, 5]) in sample order; they are written into memory maps as they
    come, so at most one batch is held in memory beyond the maps. ``arrays`` (e.g. the views' mixing)
    are stored as they are, next to the seeds. A damaged entry for this exact key is rebuilt when
    ``rebuild``, else reported.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(fields, paths)
    root = cache_dir / entry_id(key)
    with FileLock(str(cache_dir / f".{entry_id(key)}.lock")):
        if root.exists():
            try:
                entry = open_entry(cache_dir, key, checksums=checksums)
                entry.touch()
                return entry, False
            except CacheError as exc:
                if not rebuild:
                    raise CacheError(f"{exc}; set cache.rebuild: true to rebuild it") from None
                shutil.rmtree(root)
        covering = find_covering(cache_dir, fields, paths, checksums=checksums)
        if covering is not None:
            covering.touch()
            return covering, False
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".build-{entry_id(key)}-"))
        try:
            files, shapes = _write_arrays(tmp, fields["dtype"], fields.get("topk"), count, num_views, produce)
            extra = {SEEDS: seeds, **(arrays or {})}
            for name, arr in extra.items():
                np.save(tmp / _fname(name), arr)
            for fname in map(_fname, extra):
                files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": file_sha256(tmp / fname)}
            manifest = {
                "key": key,
                "fields": fields,
                **fields,
                "paths": list(paths),
                "count": count,
                "num_views": num_views,
                "num_classes": num_classes,
                "shapes": shapes,
                "files": files,
                "created": time.time(),
                "kdflow_version": kdcore.__version__,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            os.replace(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = CacheEntry(root, manifest)
        entry.touch()
        return entry, True


def _write_arrays(
    tmp: Path, dtype: str, topk: Optional[int], count: int, num_views: int, produce: Producer
) -> tuple[dict[str, dict[str, Any]], dict[str, list[int]]]:
    np_dtype, torch_dtype = STORAGE[dtype]
    maps: dict[str, np.memmap] = {}
    shapes: dict[str, list[int]] = {}
    pos = 0

    def put(name: str, t: torch.Tensor, store_dtype=None) -> None:
        if name not in maps:
            maps[name] = np.lib.format.open_memmap(
                tmp / _fname(name), mode="w+", dtype=store_dtype or np_dtype, shape=(count, num_views, *t.shape[2:])
            )
        if store_dtype is None:
            t = t.detach().to("cpu", torch_dtype)
            arr = (t.view(torch.uint16) if dtype == "bfloat16" else t).numpy()
        else:
            arr = t.detach().cpu().numpy().astype(store_dtype)
        maps[name][pos : pos + t.shape[0]] = arr

    for batch in produce():
        b = batch["logits"].shape[0]
        if pos + b > count:
            raise CacheError(f"cache build produced more than the expected {count} samples")
        for name, t in batch.items():
            if t.shape[1] != num_views:
                raise CacheError(f"cache build: {name} has {t.shape[1]} views, expected {num_views}")
            if name == CROPS:
                put(name, t, np.int32)
                continue
            shapes.setdefault(name, list(t.shape[2:]))
            if name == "logits" and topk:
                k = min(topk, t.shape[-1])
                values, indices = t.topk(k, dim=-1)
                put("logits.values", values)
                put("logits.indices", indices, np.int32)
            else:
                put(name, t)
        pos += b
    if pos != count:
        raise CacheError(f"cache build produced {pos} samples, expected {count}")
    files = {}
    for name, mm in maps.items():
        mm.flush()
        fname = _fname(name)
        files[fname] = {"bytes": (tmp / fname).stat().st_size, "sha256": file_sha256(tmp / fname)}
    maps.clear()
    return files, shapes


def gc(
    cache_dir: Path, keep_days: Optional[float] = None, max_size: Optional[int] = None, dry_run: bool = False
) -> list[CacheEntry]:
    """Remove entries unused for ``keep_days``, then the least recently used until the cache holds at
    most ``max_size`` bytes. Also removes leftovers of interrupted builds. Returns what was removed."""
    cache_dir = Path(cache_dir)
    removed = to_remove(list_entries(cache_dir), CacheEntry.last_used, CacheEntry.size_bytes, keep_days, max_size)
    now = time.time()
    if not dry_run:
        for e in removed:
            with FileLock(str(cache_dir / f".{e.id}.lock")):
                shutil.rmtree(e.root, ignore_errors=True)
        for stale in cache_dir.glob(".build-*"):
            if now - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
    return removed
