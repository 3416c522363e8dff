"""``cifar10`` / ``cifar100``: CIFAR in its standard "python version" layout (32x32 RGB).

Files are looked for in ``data.root`` (else ``$KDFLOW_HOME/data``), in the folder the official
archive extracts to (``cifar-10-batches-py`` / ``cifar-100-python``) or directly in the root.
With ``data.download: true`` torchvision downloads and checks the archive; nothing is downloaded
otherwise.

The standard CIFAR format is Python pickles (dicts of a uint8 ``data`` array [N, 3072] and a
label list). We read them ourselves, as torchvision does, but with an unpickler that only allows
what those files contain (numpy array reconstruction), so a doctored file cannot run code.
Official test split: ``test_batch`` / ``test``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kdcore.config import DataConfig
from kdcore.data.registry import DATASETS, RawData, check_options, data_root
from kdcore.errors import DataError


@dataclass(frozen=True)
class CifarLayout:
    title: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    names_key: str
    labels_key: str
    num_classes: int
    torchvision_class: str


CIFAR10 = CifarLayout(
    "CIFAR-10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
    "label_names",
    "labels",
    10,
    "CIFAR10",
)
CIFAR100 = CifarLayout(
    "CIFAR-100",
    "cifar-100-python",
    ("train",),
    "test",
    "meta",
    "fine_label_names",
    "fine_labels",
    100,
    "CIFAR100",
)

# what the CIFAR pickles may reference: numpy array / dtype reconstruction, and bytes decoding
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR file")


def read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh, encoding="latin1").load()
    except OSError as exc:
        raise DataError(f"cannot read file {path}: {exc.strerror or exc}") from None
    except EOFError:
        raise DataError(f"file {path} is truncated; delete it and get it again (data.download: true)") from None
    except Exception as exc:  # UnpicklingError, ValueError... from a corrupt or foreign file
        raise DataError(f"file {path} is not a valid CIFAR python file: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"file {path} is not a valid CIFAR python file: it holds a {type(obj).__name__}, not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    entry = read_pickle(path)
    if "data" not in entry or layout.labels_key not in entry:
        raise DataError(f"file {path} lacks the 'data' or {layout.labels_key!r} entry of a {layout.title} batch")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[layout.labels_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"file {path}: 'data' should be uint8 [N, 3072], found {data.dtype} {list(data.shape)}")
    if len(data) != len(labels):
        raise DataError(f"file {path} has {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def find_folder(root: Path, layout: CifarLayout) -> Optional[Path]:
    needed = (*layout.train_files, layout.test_file, layout.meta_file)
    for folder in (root / layout.folder, root):
        if all((folder / name).is_file() for name in needed):
            return folder
    return None


def download(root: Path, layout: CifarLayout) -> None:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise DataError(f"downloading {layout.title} needs torchvision: pip install torchvision") from None
    try:
        getattr(tvd, layout.torchvision_class)(root=str(root), train=True, download=True)
    except Exception as exc:  # network or disk problems, reported in one line
        raise DataError(f"could not download {layout.title} into {root}: {exc}") from None


def load_cifar(cfg: DataConfig, layout: CifarLayout) -> RawData:
    check_options(cfg)
    root = data_root(cfg)
    folder = find_folder(root, layout)
    if folder is None and cfg.download:
        download(root, layout)
        folder = find_folder(root, layout)
    if folder is None:
        files = ", ".join((*layout.train_files, layout.test_file, layout.meta_file))
        raise DataError(
            f"{layout.title} files not found: looked in {root / layout.folder} and {root} for {files}. "
            f"Set data.download: true to download them into {root} (data.root, else $KDFLOW_HOME/data), "
            f"or point data.root at the folder holding {layout.folder}/."
        )
    batches = [read_batch(folder / name, layout) for name in layout.train_files]
    test_x, test_y = read_batch(folder / layout.test_file, layout)
    meta = read_pickle(folder / layout.meta_file)
    names = meta.get(layout.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes:
        raise DataError(
            f"file {folder / layout.meta_file} should list {layout.num_classes} class names under {layout.names_key!r}"
        )
    return RawData(
        train_x=np.concatenate([b[0] for b in batches]),
        train_y=np.concatenate([b[1] for b in batches]),
        test_x=test_x,
        test_y=test_y,
        class_names=[n.decode() if isinstance(n, bytes) else str(n) for n in names],
        source=str(folder),
    )


@DATASETS.register("cifar10")
def load_cifar10(cfg: DataConfig) -> RawData:
    return load_cifar(cfg, CIFAR10)


@DATASETS.register("cifar100")
def load_cifar100(cfg: DataConfig) -> RawData:
    return load_cifar(cfg, CIFAR100)
