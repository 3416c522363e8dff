"""Did distillation pay? The distilled student against the plain-trained baseline on the same test
samples, judged by McNemar's test on per-sample correctness, so the size of the test split counts:
a one-point gain on 300 samples is noise, on 10,000 it is not."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from kdcore.evaluate.significance import mcnemar_test

if TYPE_CHECKING:
    from kdcore.config import PipelineConfig

ALPHA = 0.05


@dataclass(frozen=True)
class Verdict:
    pays: bool
    gain: float  # student top-1 minus baseline top-1 (a fraction)
    margin: float  # half-width of the (1 - alpha) interval of that gain on this test split
    p_value: float  # McNemar, student vs baseline
    n: int  # test samples
    alpha: float
    message: str
    advice: str  # "" when distillation paid

    def as_dict(self) -> dict:
        return asdict(self)


def paired_margin(only_a: int, only_b: int, n: int, alpha: float = ALPHA) -> float:
    """Half-width of the normal interval of the accuracy difference of two models scored on the
    same ``n`` samples (``only_a``/``only_b``: samples only one of them gets right)."""
    var = ((only_a + only_b) - (only_a - only_b) ** 2 / n) / n**2
    return NormalDist().inv_cdf(1 - alpha / 2) * float(np.sqrt(max(var, 0.0)))


@dataclass(frozen=True)
class Fit:
    """How closely the student follows its teacher: top-1 agreement on ``n`` training samples it
    learned from and on the ``n_test`` samples of the test split."""

    train_agreement: float
    test_agreement: float
    n: int
    n_test: int


def fit_diagnosis(fit: Fit, alpha: float = ALPHA) -> str:
    """Which limit the student met, read from its agreement with the teacher: on the training samples
    it fell short where it learned (it cannot fit this teacher) or it fits them but not new inputs
    (it follows the teacher where it trained and no further) -- whichever shortfall is the larger,
    when the samples tell them apart (the difference outside its (1 - alpha) normal interval)."""
    a, b = fit.train_agreement, fit.test_agreement
    train, test = 100 * a, 100 * b
    figures = f"{train:.1f}% of {fit.n} training samples it learned from and {test:.1f}% of the test samples"
    # (a - b) - (1 - a): the train-to-test gap minus the shortfall where it trained, a and b independent
    difference = 2 * a - b - 1
    spread = float(np.sqrt(4 * a * (1 - a) / max(fit.n, 1) + b * (1 - b) / max(fit.n_test, 1)))
    if abs(difference) <= NormalDist().inv_cdf(1 - alpha / 2) * spread:
        return (
            f"The student agrees with its teacher on {figures}; on this many samples it is not clear "
            "whether it falls short where it trained (then a larger student, a closer teacher or a "
            "longer distillation help) or only beyond (then more views of each image, cache.views)."
        )
    if difference > 0:
        return (
            f"The student agrees with its teacher on {figures}: it follows the teacher where it trained, "
            "not beyond; showing it the teacher on more inputs (cache.views: more views of each image, "
            "function matching) over a longer distillation usually narrows that gap."
        )
    return (
        f"The student agrees with its teacher on only {figures}: it cannot follow this teacher even "
        "where it trained, so a stronger teacher or more views help little; a larger student, a closer "
        "teacher or a longer distillation are what can."
    )


def advice(cfg: Optional["PipelineConfig"] = None, fit: Optional[Fit] = None) -> str:
    """What usually helps when the distilled student does not beat its baseline (first, with ``fit``,
    what the student's agreement with its teacher says)."""
    tips = [
        "distil longer (more distill.train.max_epochs; the student needs time to match the teacher)",
        "a lower learning rate (distill.train.lr)",
    ]
    if cfg is None or cfg.pretrain.method != "none":
        tips.append("no hint stage (pretrain.method: none): a hint-initialised student can start worse")
    tips.append("a closer teacher (a smaller or shallower one: a student too far below its teacher cannot follow it)")
    usual = "What usually helps: " + "; ".join(tips) + "."
    return f"{fit_diagnosis(fit)} {usual}" if fit is not None else usual


def distillation_verdict(
    student_correct: Sequence[bool] | np.ndarray,
    baseline_correct: Sequence[bool] | np.ndarray,
    alpha: float = ALPHA,
    cfg: Optional["PipelineConfig"] = None,
    fit: Optional[Fit] = None,
) -> Verdict:
    """Pays when the student is better than the baseline AND significantly so (McNemar p < ``alpha``);
    ``fit`` (the student's agreement with its teacher) makes the advice specific."""
    test = mcnemar_test(student_correct, baseline_correct)  # a = student, b = baseline
    gain = test.accuracy_a - test.accuracy_b
    margin = paired_margin(test.only_a_correct, test.only_b_correct, test.n, alpha)
    pays = gain > 0 and test.p_value < alpha
    figures = (
        f"student {100 * test.accuracy_a:.2f}% vs baseline {100 * test.accuracy_b:.2f}% "
        f"({100 * gain:+.2f} points, margin ±{100 * margin:.2f} on {test.n} test samples, "
        f"McNemar p = {test.p_value:.3g})"
    )
    if pays:
        message = f"distillation paid: {figures}"
    elif gain > 0:
        message = f"distillation did not pay: the gain is within the noise of this test split: {figures}"
    else:
        message = f"distillation did not pay: the distilled student does not beat the plain-trained baseline: {figures}"
    return Verdict(pays, gain, margin, test.p_value, test.n, alpha, message, "" if pays else advice(cfg, fit))
