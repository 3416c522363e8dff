"""How progress leaves kdcore: a callbacks object whose hooks a stage calls.

Nothing in kdcore prints or reaches a tracker; the orchestration layer passes an object that
forwards these calls where they belong (MLflow metrics, a Prefect progress artifact, the terminal).
"""

from __future__ import annotations


class TrainCallbacks:
    """Progress leaves the loop through these hooks; override what you need."""

    def on_fit_start(self, start_epoch: int, max_epochs: int) -> None: ...

    def on_resume(self, history: list[dict[str, float]]) -> None:
        """Resuming after epoch ``len(history) - 1``: the metrics of the epochs already trained."""

    def on_epoch_start(self, epoch: int) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_progress(self, what: str, done: int, total: int) -> None:
        """Work that is not epochs (a cache build, an evaluation pass): ``done`` of ``total`` units."""


class BeforeEachEpoch(TrainCallbacks):
    """Forwards every hook to ``inner`` and first calls ``prepare(epoch)`` at each epoch's start (what
    a stage draws per epoch, e.g. which augmented view every sample shows)."""

    def __init__(self, inner: TrainCallbacks, prepare) -> None:
        self.inner, self.prepare = inner, prepare

    def on_fit_start(self, start_epoch: int, max_epochs: int) -> None:
        self.inner.on_fit_start(start_epoch, max_epochs)

    def on_resume(self, history: list[dict[str, float]]) -> None:
        self.inner.on_resume(history)

    def on_epoch_start(self, epoch: int) -> None:
        self.prepare(epoch)
        self.inner.on_epoch_start(epoch)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.inner.on_epoch_end(epoch, metrics)

    def on_progress(self, what: str, done: int, total: int) -> None:
        self.inner.on_progress(what, done, total)
