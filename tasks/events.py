"""In-process stage events: what a terminal progress display listens to.

Stage tasks publish here from the same callbacks that feed MLflow (never by parsing logs); the
CLI subscribes for the length of a run. Publishing with no subscriber costs nothing, and a
listener that raises never breaks a stage.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Optional

Kind = Literal["waiting", "running", "epoch", "progress", "cached", "done", "failed"]


@dataclass(frozen=True)
class StageEvent:
    """``stage`` changed state (``kind``); an ``epoch`` event carries the finished epoch (0-based),
    ``max_epochs`` and its metrics; a ``progress`` event carries ``done`` of ``total`` units of ``what``."""

    stage: str
    kind: Kind
    epoch: Optional[int] = None
    max_epochs: Optional[int] = None
    metrics: dict[str, float] = field(default_factory=dict)
    what: str = ""
    done: int = 0
    total: int = 0
    message: str = ""


Listener = Callable[[StageEvent], None]
_LISTENERS: list[Listener] = []
_LOCK = threading.Lock()


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


def emit(stage: str, kind: Kind, **fields: Any) -> None:
    publish(StageEvent(stage, kind, **fields))
