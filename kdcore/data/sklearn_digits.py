"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, values 0..16).

Shipped inside scikit-learn, so it needs no download. No official test split (one is carved).

The file is read where scikit-learn keeps it (``sklearn/datasets/data/digits.csv.gz``: 64 pixels,
then the digit, per row), found without importing scikit-learn: its import costs every process that
loads these 1,797 rows 1.3 s of a core beside torch (3.9 s alone). Where the file is not there, as
a later scikit-learn might keep it elsewhere, ``sklearn.datasets.load_digits`` reads it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np

from kdcore.config import DataConfig
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.errors import DataError

NOT_INSTALLED = "dataset digits needs scikit-learn, which is not installed: pip install scikit-learn"


def bundled_file() -> Optional[Path]:
    """scikit-learn's digits file, or None (not installed, or kept elsewhere)."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _read(path: Optional[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 8, 8] and digits [N]."""
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError(NOT_INSTALLED) from None
    d = sk_load_digits()
    return np.asarray(d.images), np.asarray(d.target)


@DATASETS.register("digits")
def load_digits(cfg: DataConfig) -> RawData:
    check_options(cfg)
    images, digits = _read(bundled_file())
    return RawData(
        train_x=images.astype(np.uint8).reshape(-1, 1, 8, 8),  # values 0..16
        train_y=digits.astype(np.int64),
        class_names=[str(c) for c in range(10)],
        scale=16.0,
        source="sklearn.datasets.load_digits",
    )
