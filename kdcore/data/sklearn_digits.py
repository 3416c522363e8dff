"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes, values 0..16).

Shipped inside scikit-learn, so it needs no download. No official test split (one is carved).
"""

from __future__ import annotations

import numpy as np

from kdcore.config import DataConfig
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.errors import DataError


@DATASETS.register("digits")
def load_digits(cfg: DataConfig) -> RawData:
    check_options(cfg)
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError("dataset digits needs scikit-learn, which is not installed: pip install scikit-learn") from None
    d = sk_load_digits()
    x = np.asarray(d.images).astype(np.uint8).reshape(-1, 1, 8, 8)  # values 0..16
    y = np.asarray(d.target, dtype=np.int64)
    return RawData(
        train_x=x,
        train_y=y,
        class_names=[str(int(c)) for c in d.target_names],
        scale=16.0,
        source="sklearn.datasets.load_digits",
    )
