"""Deterministic train / val / test splits from a seeded permutation, stratified by class.

Same config and same data -> the same indices in any process (numpy's PCG64 ``default_rng``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdcore.config import DataConfig
from kdcore.errors import DataError


@dataclass
class SplitIndices:
    """Indices into the train pool (``train``, ``val``, and ``test`` when carved) or into the
    official test set (``test`` when ``test_is_official``)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_is_official: bool

    def take(self, pool_x: Any, pool_y: np.ndarray, test_x: Any, test_y: np.ndarray) -> dict[str, tuple[Any, Any]]:
        """{split: (inputs, labels)}: train and val from the pool, test from ``test_x``/``test_y`` (the
        official test set, or the pool again when the test split was carved from it)."""
        return {
            "train": (pool_x[self.train], pool_y[self.train]),
            "val": (pool_x[self.val], pool_y[self.val]),
            "test": (test_x[self.test], test_y[self.test]),
        }

    def params(self, cfg: DataConfig) -> dict[str, Any]:
        """The split settings a data fingerprint covers."""
        return {
            "val_fraction": cfg.val_fraction,
            "test_fraction": None if self.test_is_official else cfg.test_fraction,
            "split_seed": cfg.split_seed,
            "limit_train": cfg.limit_train,
            "limit_test": cfg.limit_test,
            "official_test": self.test_is_official,
        }


def carve(
    y: np.ndarray, fraction: float, rng: np.random.Generator, what: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices ``0..len(y)-1`` into (rest, carved) with ``carved`` ~ ``fraction`` of them.

    Stratified: each class gives its share (largest-remainder rounding, so the total is exactly
    ``round(fraction * n)``, at least 1). Both parts come out in shuffled order.
    """
    n = len(y)
    n_carve = max(1, int(round(fraction * n)))
    if n_carve >= n:
        raise DataError(
            f"dataset {name} has only {n} sample(s): too few to carve a {what} split of {fraction:g} "
            "and keep samples for training"
        )
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    ideal = counts * (n_carve / n)
    take = np.floor(ideal).astype(np.int64)
    short = n_carve - int(take.sum())
    order = np.argsort(-(ideal - take), kind="stable")
    take[order[:short]] += 1

    perm = rng.permutation(n)
    cls_of_perm = inverse[perm]
    # rank of each position among the positions of its class, in permutation order
    rank = np.empty(n, dtype=np.int64)
    for c in range(len(classes)):
        where = np.flatnonzero(cls_of_perm == c)
        rank[where] = np.arange(len(where))
    is_carved = rank < take[cls_of_perm]
    return perm[~is_carved], perm[is_carved]


def make_splits(name: str, train_y: np.ndarray, n_official_test: int | None, cfg: DataConfig) -> SplitIndices:
    """Indices of the three splits for ``cfg`` (``n_official_test`` is None when there is none).

    The test split is carved first (when there is no official one), then val from what is left;
    ``limit_train`` keeps the first N of the shuffled train split, ``limit_test`` the first N of
    the test split, and with ``limit_train`` val keeps at most ``max(1, limit_train // 5)``.
    """
    rng = np.random.default_rng(cfg.split_seed)
    pool = np.arange(len(train_y))
    if n_official_test is None:
        rest, test = carve(train_y, cfg.test_fraction, rng, "test", name)
        pool = rest
        official = False
    else:
        test = np.arange(n_official_test)
        official = True
    keep, val = carve(train_y[pool], cfg.val_fraction, rng, "val", name)
    train, val = pool[keep], pool[val]

    if cfg.limit_train is not None:
        train = train[: cfg.limit_train]
        val = val[: max(1, cfg.limit_train // 5)]
    if cfg.limit_test is not None:
        test = test[: cfg.limit_test]
    return SplitIndices(train=train, val=val, test=test, test_is_official=official)
