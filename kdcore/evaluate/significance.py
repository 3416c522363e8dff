"""Paired significance of two classifiers on the same samples: McNemar's test on per-sample correctness.

The test looks only at the discordant samples (one model right, the other wrong). With fewer than
``EXACT_BELOW`` of them it uses the exact binomial form, otherwise the chi-square form with
continuity correction; both are computed by mlxtend (``mcnemar_table`` / ``mcnemar``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np

from kdcore.errors import KdflowError

EXACT_BELOW = 25


@dataclass(frozen=True)
class McNemarResult:
    """Counts of the 2x2 table (``a`` is the first model, ``b`` the second) and the test's outcome."""

    n: int
    both_correct: int
    only_a_correct: int
    only_b_correct: int
    both_wrong: int
    statistic: Optional[float]
    p_value: float
    exact: bool

    @property
    def accuracy_a(self) -> float:
        return (self.both_correct + self.only_a_correct) / self.n

    @property
    def accuracy_b(self) -> float:
        return (self.both_correct + self.only_b_correct) / self.n

    def as_dict(self) -> dict:
        return {**asdict(self), "accuracy_a": self.accuracy_a, "accuracy_b": self.accuracy_b}


def _as_bool(values: Sequence[bool] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise KdflowError(
            f"McNemar: {name} must be a non-empty 1-D sequence of per-sample correctness, got shape {arr.shape}"
        )
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise KdflowError(f"McNemar: {name} must hold booleans (or 0/1), one per sample")
    return arr.astype(bool)


def mcnemar_test(
    correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray, exact: Optional[bool] = None
) -> McNemarResult:
    """McNemar's test of ``correct_a`` against ``correct_b`` (same samples, same order).

    ``exact=None`` picks the exact binomial test when there are fewer than ``EXACT_BELOW``
    discordant samples, else the corrected chi-square test."""
    a, b = _as_bool(correct_a, "correct_a"), _as_bool(correct_b, "correct_b")
    if a.shape != b.shape:
        raise KdflowError(
            f"McNemar: the two models were scored on different numbers of samples "
            f"({a.size} vs {b.size}); compare them on the same held-out set"
        )
    from mlxtend.evaluate import mcnemar, mcnemar_table  # brings scikit-learn: imported when a verdict is due

    ones = np.ones(a.size, dtype=int)
    table = mcnemar_table(y_target=ones, y_model1=a.astype(int), y_model2=b.astype(int))
    both, only_a, only_b, neither = (int(v) for v in table.ravel())
    discordant = only_a + only_b
    use_exact = discordant < EXACT_BELOW if exact is None else exact
    if discordant == 0:  # identical verdicts on every sample: no evidence of a difference
        statistic, p_value = (None if use_exact else 0.0), 1.0
    else:
        statistic, p_value = mcnemar(table, corrected=True, exact=use_exact)
    return McNemarResult(
        n=int(a.size),
        both_correct=both,
        only_a_correct=only_a,
        only_b_correct=only_b,
        both_wrong=neither,
        statistic=None if statistic is None else float(statistic),
        p_value=float(min(max(p_value, 0.0), 1.0)),
        exact=use_exact,
    )
