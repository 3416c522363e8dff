"""``image_csv``: images listed in a CSV file of ``path,label`` rows.

    data.root: photos/labels.csv        # path,label  (paths relative to the CSV's folder)
    data.options.test: photos/test.csv  # optional: an official test set in the same form

``label`` holds class names (classes are their sorted set) or integer class indices 0..K-1. Every
listed file must exist; the CSV has exactly the columns ``path`` and ``label``. Images are
converted to RGB (grey with ``data.options.grayscale: true``); in memory they are resized to
``data.image_size`` like ``imagefolder``'s, streamed they are transformed as in
:mod:`kdcore.data.stream`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from kdcore.config import DataConfig
from kdcore.data.image_files import ImageFiles, lists_files
from kdcore.data.imagefolder import read_files
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.errors import DataError

COLUMNS = ("path", "label")


def read_csv(csv: Path, class_names: Optional[list[str]] = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(absolute paths, labels, class names) of one CSV; ``class_names`` fixes the label order."""
    import pandas as pd

    if not csv.is_file():
        raise DataError(f"image list {csv} does not exist")
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"image list {csv} is not a readable CSV ({str(exc).strip()})") from None
    columns = [str(c).strip() for c in table.columns]
    unknown = [c for c in columns if c not in COLUMNS]
    missing = [c for c in COLUMNS if c not in columns]
    if unknown or missing:
        parts = ([f"unknown column(s) {', '.join(unknown)}"] if unknown else []) + (
            [f"missing column(s) {', '.join(missing)}"] if missing else []
        )
        raise DataError(f"image list {csv}: {'; '.join(parts)} (the columns are exactly: path,label)")
    table.columns = columns
    if table.empty:
        raise DataError(f"image list {csv} lists no images")
    blank = table.index[(table["path"].str.strip() == "") | (table["label"].str.strip() == "")]
    if len(blank):
        raise DataError(f"image list {csv}: row {int(blank[0]) + 2} has an empty path or label")
    folder = csv.parent
    paths = [str((folder / p.strip()).resolve()) for p in table["path"]]
    absent = [(row, p) for row, p in enumerate(paths) if not Path(p).is_file()]
    if absent:
        row, p = absent[0]
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise DataError(f"image list {csv}: row {row + 2} names {p}, which does not exist{more}")
    raw = [s.strip() for s in table["label"]]
    if all(s.lstrip("-").isdigit() for s in raw):
        labels = np.asarray([int(s) for s in raw], dtype=np.int64)
        names = class_names or [str(i) for i in range(int(labels.max()) + 1)]
        if labels.min() < 0 or labels.max() >= len(names):
            raise DataError(
                f"image list {csv}: integer labels must lie in [0, {len(names)}), "
                f"got {int(labels.min())}..{int(labels.max())}"
            )
        return paths, labels, names
    names = class_names or sorted(set(raw))
    index = {n: i for i, n in enumerate(names)}
    unseen = sorted(set(raw) - set(index))
    if unseen:
        raise DataError(
            f"image list {csv}: labels {', '.join(unseen[:5])} are not among the train classes ({', '.join(names)})"
        )
    return paths, np.asarray([index[s] for s in raw], dtype=np.int64), names


@lists_files("image_csv")
def list_image_csv(cfg: DataConfig) -> ImageFiles:
    check_options(cfg, {"grayscale", "test"})
    if not cfg.root:
        raise DataError("dataset image_csv needs data.root: a CSV file of path,label rows")
    csv = Path(cfg.root).expanduser()
    paths, labels, names = read_csv(csv)
    files = ImageFiles(paths, labels, names, source=str(csv), grayscale=bool(cfg.options.get("grayscale")))
    if cfg.options.get("test"):
        files.test_paths, files.test_y, _ = read_csv(Path(cfg.options["test"]).expanduser(), names)
    return files


@DATASETS.register("image_csv")
def load_image_csv(cfg: DataConfig) -> RawData:
    return read_files(list_image_csv(cfg), cfg.image_size)
