"""``text_csv``: your own texts and labels in CSV.

    data.root: reviews.csv                      -> a test split is carved
    data.root: folder/ with train.csv, test.csv -> official train / test

Columns ``text`` and ``label`` by default (``data.options.text_column`` / ``label_column``).
Labels may be names or integers; classes are the train labels sorted (numerically when all are
integers). Rows with an empty text are skipped. Word-level tokens by default (``data.options``:
tokenizer, lowercase, max_len, min_freq, max_vocab).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from kdcore.config import DataConfig
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.data.sequences import TEXT_OPTIONS, text_options
from kdcore.errors import DataError

# markers that spreadsheets and pandas write for a missing value; as a label they mean the row has none
NO_LABEL = frozenset({"NA", "N/A", "n/a", "#N/A", "#NA", "<NA>", "NaN", "nan", "-NaN", "NULL", "null", "None"})


def read_table(path: Path, text_col: str, label_col: str) -> tuple[list[str], list[str]]:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"dataset text_csv: cannot read {path}: {exc}") from None
    missing = [c for c in (text_col, label_col) if c not in table.columns]
    if missing:
        raise DataError(
            f"dataset text_csv: {path} has no column {missing[0]!r}; its columns are "
            f"{', '.join(map(str, table.columns))} (set data.options.text_column / label_column)"
        )
    texts = table[text_col].str.strip()
    keep = texts != ""
    labels = table[label_col].str.strip()
    missing = keep & (labels.isin(NO_LABEL) | (labels == ""))
    if missing.any():
        rows = (np.flatnonzero(missing.to_numpy()) + 1).tolist()
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise DataError(
            f"dataset text_csv: {path} has {len(rows)} row(s) with text but no {label_col!r} (empty, or a "
            f"missing-value marker such as NA or NaN): data row(s) {shown}, counting from 1 after the header; "
            "fill in their labels or drop those rows"
        )
    return texts[keep].tolist(), labels[keep].tolist()


def class_order(labels: list[str]) -> list[str]:
    unique = sorted(set(labels))
    try:
        return [str(v) for v in sorted({int(v) for v in unique})] if all(str(int(v)) == v for v in unique) else unique
    except ValueError:
        return unique


def _encode(texts: list[str], labels: list[str], classes: list[str], path: Path) -> tuple[np.ndarray, np.ndarray]:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(
            f"dataset text_csv: {path} has labels {unknown[:5]} that the train data does not have "
            f"(classes: {', '.join(classes)})"
        )
    x = np.empty(len(texts), dtype=object)
    x[:] = texts
    return x, np.array([index[v] for v in labels], dtype=np.int64)


@DATASETS.register("text_csv")
def load_text_csv(cfg: DataConfig) -> RawData:
    check_options(cfg, (*TEXT_OPTIONS, "text_column", "label_column"))
    options = text_options(cfg.options, tokenizer="word", max_len=64)
    if not cfg.root:
        raise DataError("dataset text_csv needs data.root: a CSV file, or a folder holding train.csv and test.csv")
    root = Path(cfg.root).expanduser()
    text_col = str(cfg.options.get("text_column", "text"))
    label_col = str(cfg.options.get("label_column", "label"))
    test_path: Optional[Path] = None
    if root.is_dir():
        train_path, test_path = root / "train.csv", root / "test.csv"
        if not train_path.is_file():
            raise DataError(f"dataset text_csv: folder {root} has no train.csv")
        if not test_path.is_file():
            test_path = None
    elif root.is_file():
        train_path = root
    else:
        raise DataError(f"dataset text_csv: data.root {str(root)!r} does not exist")
    texts, labels = read_table(train_path, text_col, label_col)
    if not texts:
        raise DataError(f"dataset text_csv: {train_path} has no rows with text")
    classes = class_order(labels)
    train_x, train_y = _encode(texts, labels, classes, train_path)
    test_x = test_y = None
    if test_path is not None:
        test_x, test_y = _encode(*read_table(test_path, text_col, label_col), classes, test_path)
    return RawData(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        class_names=classes,
        scale=1.0,
        source=str(root),
        modality="text",
        options=options,
    )
