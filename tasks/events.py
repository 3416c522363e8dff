"""In-process stage events: what a terminal progress display listens to.

Stage tasks publish here from the same callbacks that feed MLflow (never by parsing logs); the
CLI subscribes for the length of a run. Publishing with no subscriber costs nothing, and a
listener that raises never breaks a stage. A flow that runs several pipelines at once (a sweep's
trials) names each one's part with :func:`scoped`; its events then carry that ``scope``.
"""

from __future__ import annotations

import contextlib
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Optional

Kind = Literal["waiting", "running", "epoch", "progress", "cached", "done", "failed"]


@dataclass(frozen=True)
class StageEvent:
    """``stage`` changed state (``kind``); an ``epoch`` event carries the finished epoch (0-based),
    ``max_epochs`` and its metrics; a ``progress`` event carries ``done`` of ``total`` units of ``what``.
    ``scope``: the part of a larger run the stage belongs to (``trial 3`` of a sweep), or empty."""

    stage: str
    kind: Kind
    epoch: Optional[int] = None
    max_epochs: Optional[int] = None
    metrics: dict[str, float] = field(default_factory=dict)
    what: str = ""
    done: int = 0
    total: int = 0
    message: str = ""
    scope: str = ""


Listener = Callable[[StageEvent], None]
_LISTENERS: list[Listener] = []
_LOCK = threading.Lock()
_SCOPE: ContextVar[str] = ContextVar("kdflow_event_scope", default="")


def publish(event: StageEvent) -> None:
    with _LOCK:
        listeners = list(_LISTENERS)
    for fn in listeners:
        try:
            fn(event)
        except Exception:  # noqa: BLE001 - a display must never break a stage
            pass


@contextlib.contextmanager
def subscribed(fn: Listener) -> Iterator[None]:
    """Deliver every event published inside the block to ``fn`` (from whichever thread publishes)."""
    with _LOCK:
        _LISTENERS.append(fn)
    try:
        yield
    finally:
        with _LOCK:
            _LISTENERS.remove(fn)


@contextlib.contextmanager
def scoped(scope: str) -> Iterator[None]:
    """Events emitted inside the block carry ``scope``, also those of the tasks submitted from it
    (Prefect's task runners run a task in a copy of the submitter's context)."""
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def emit(stage: str, kind: Kind, **fields: Any) -> None:
    publish(StageEvent(stage, kind, scope=_SCOPE.get(), **fields))
