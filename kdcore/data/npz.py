"""``npz``: your own image arrays in one ``.npz`` file (``data.root`` is the file's path).

Arrays: ``x_train`` [N, H, W] or [N, C, H, W] (uint8 0..255, or float in [0, 1]), ``y_train`` [N]
integer labels, optionally ``x_test``/``y_test`` (else a test split is carved) and
``class_names`` (strings). Without class names the class count is ``data.options.num_classes``,
else the largest label + 1. Read with ``allow_pickle=False``: nothing in the file is executed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdcore.config import DataConfig
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.errors import DataError


def _images(name: str, arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise DataError(f"dataset npz: {name} in {path} should be [N, H, W] or [N, C, H, W], found shape {arr.shape}")
    return arr


@DATASETS.register("npz")
def load_npz(cfg: DataConfig) -> RawData:
    check_options(cfg, {"num_classes"})
    if not cfg.root:
        raise DataError("dataset npz needs data.root: the path of your .npz file")
    path = Path(cfg.root).expanduser()
    if not path.is_file():
        raise DataError(f"dataset npz: file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"dataset npz: cannot read {path} as a .npz file ({exc})") from None
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise DataError(
            f"dataset npz: {path} lacks {', '.join(missing)} (it has {', '.join(sorted(arrays)) or 'nothing'})"
        )
    x = _images("x_train", arrays["x_train"], path)
    test_x = _images("x_test", arrays["x_test"], path) if "x_test" in arrays else None
    labels = [arrays["y_train"]] + ([arrays["y_test"]] if "y_test" in arrays else [])
    for y in labels:
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"dataset npz: labels in {path} must be integers, found {y.dtype}")
    if "class_names" in arrays:
        names = [str(n) for n in arrays["class_names"]]
    elif "num_classes" in cfg.options:
        names = [str(i) for i in range(int(cfg.options["num_classes"]))]
    else:
        names = [str(i) for i in range(int(max(int(y.max(initial=0)) for y in labels)) + 1)]
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    return RawData(
        train_x=x,
        train_y=arrays["y_train"].astype(np.int64),
        class_names=names,
        test_x=test_x,
        test_y=arrays["y_test"].astype(np.int64) if "y_test" in arrays else None,
        scale=scale,
        source=str(path),
    )
