"""Live progress of a run in the terminal, fed by the stage events of tasks/events.py.

On a terminal: a rich live table, one line per stage (waiting / running / cached / done / failed),
the training stages' current epoch with loss, validation metric and ETA, and the cache build's
progress. When stdout is not a terminal (a pipe, a CI log): plain lines, one per state change and
per epoch. ``quiet``: nothing."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tasks.events import StageEvent, subscribed

STYLES = {"waiting": "dim", "running": "bold cyan", "cached": "green", "done": "bold green", "failed": "bold red"}
VAL_KEYS = ("val_top1", "val_loss")


@dataclass
class StageLine:
    stage: str
    status: str = "waiting"
    started: Optional[float] = None
    finished: Optional[float] = None
    epoch: Optional[int] = None  # last finished epoch, 0-based
    max_epochs: Optional[int] = None
    metrics: dict[str, float] = field(default_factory=dict)
    what: str = ""
    done: int = 0
    total: int = 0
    message: str = ""

    def elapsed(self, now: Optional[float] = None) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or now or time.monotonic()) - self.started

    def eta(self, now: Optional[float] = None) -> Optional[float]:
        """Seconds left at the pace so far (an upper bound: convergence can stop a stage earlier)."""
        if self.epoch is None or not self.max_epochs or self.started is None:
            return None
        per_epoch = self.elapsed(now) / (self.epoch + 1)
        return max(self.max_epochs - self.epoch - 1, 0) * per_epoch


def _seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _apply(line: StageLine, ev: StageEvent, now: float) -> Optional[str]:
    """Apply ``ev`` to ``line``; returns what a plain line says about it (None: not worth a line)."""
    if ev.kind == "waiting":
        line.status, line.message = "waiting", ev.message or line.message
        return None
    if ev.kind == "running":
        line.status, line.started, line.finished = "running", now, None
        if ev.message:
            line.message = ev.message
        return "running" + (f" ({ev.message})" if ev.message else "")
    if ev.kind == "epoch":
        if line.started is None:
            line.status, line.started = "running", now
        line.epoch, line.max_epochs, line.metrics = ev.epoch, ev.max_epochs, dict(ev.metrics)
        return describe(line, now)
    if ev.kind == "progress":
        if line.started is None:
            line.status, line.started = "running", now
        first = line.what != ev.what or not line.total
        before = 4 * line.done // line.total if line.total else -1
        line.what, line.done, line.total = ev.what, ev.done, ev.total
        quarter = 4 * ev.done // ev.total if ev.total else 0
        if first or quarter != before:  # plain output: a line per quarter, not per batch
            return f"{ev.what} {ev.done}/{ev.total}"
        return None
    line.status, line.message = ev.kind, ev.message
    if ev.kind == "cached":
        return "cached (skipped)"
    line.finished = now
    took = f" in {_seconds(line.elapsed(now))}" if line.started is not None else ""
    if ev.kind == "failed":
        return f"failed{took}" + (f": {ev.message}" if ev.message else "")
    return f"done{took}" + (f": {ev.message}" if ev.message else "")


def describe(line: StageLine, now: Optional[float] = None) -> str:
    """What a stage is doing, in a few words (the detail column, and the plain lines' text)."""
    parts: list[str] = []
    if line.epoch is not None and line.max_epochs:
        parts.append(f"epoch {line.epoch + 1}/{line.max_epochs}")
        if "train_loss" in line.metrics:
            parts.append(f"loss {line.metrics['train_loss']:.4f}")
        for key in VAL_KEYS:
            if key in line.metrics:
                v = line.metrics[key]
                parts.append(f"{key} {100 * v:.2f}%" if key == "val_top1" else f"{key} {v:.4f}")
                break
        eta = line.eta(now)
        if line.status == "running" and eta is not None:
            parts.append(f"ETA {_seconds(eta)}")
    if line.total and line.status == "running":
        parts.append(f"{line.what} {line.done}/{line.total} ({100 * line.done / line.total:.0f}%)")
    if line.message:
        parts.append(line.message)
    return ", ".join(parts)


class Board:
    """The state of every stage, updated from events (from any thread).

    An event with a ``scope`` (a sweep's ``trial 3``) updates the scope's line, not a line of its
    own: the line shows the scope's current stage and what it is doing (``distill: epoch 3/10,
    ...``); the scope's own events (``emit("trial 3", ...)``, no scope) say when it starts and ends."""

    def __init__(self, stages: Sequence[str] = ()) -> None:
        self.lines: dict[str, StageLine] = {s: StageLine(s) for s in stages}
        self.current: dict[str, StageLine] = {}  # a scope's line -> the line of its latest stage
        self._stages: dict[tuple[str, str], StageLine] = {}
        self._lock = threading.Lock()

    def update(self, ev: StageEvent) -> Optional[str]:
        """Apply ``ev``; returns the plain-text line to print for it, or None when it is not worth a line."""
        now = time.monotonic()
        with self._lock:
            if not ev.scope:
                text = _apply(self.lines.setdefault(ev.stage, StageLine(ev.stage)), ev, now)
                return None if text is None else f"[{ev.stage}] {text}"
            outer = self.lines.setdefault(ev.scope, StageLine(ev.scope))
            inner = self._stages.setdefault((ev.scope, ev.stage), StageLine(ev.stage))
            text = _apply(inner, ev, now)
            if ev.kind == "waiting":
                return None
            self.current[ev.scope] = inner
            if ev.kind == "failed":
                outer.status, outer.finished, outer.message = "failed", now, f"{ev.stage}: {ev.message}"
            elif outer.status in ("waiting", "cached", "done"):  # one of its stages is at work
                outer.status, outer.finished = "running", None
                if outer.started is None:
                    outer.started = now
            return None if text is None else f"[{ev.scope} {ev.stage}] {text}"

    def __call__(self, ev: StageEvent) -> None:
        """A listener for tasks.events (the live display renders the state, not the returned line)."""
        self.update(ev)

    def table(self) -> Table:
        now = time.monotonic()
        t = Table(box=box.SIMPLE, show_header=False, pad_edge=False)
        t.add_column("stage", no_wrap=True)
        t.add_column("status", no_wrap=True)
        t.add_column("time", justify="right", no_wrap=True)
        t.add_column("detail", overflow="ellipsis", no_wrap=True)
        with self._lock:
            for line in self.lines.values():
                spent = _seconds(line.elapsed(now)) if line.started is not None else ""
                detail = describe(line, now)
                inner = self.current.get(line.stage)
                if inner is not None and line.status == "running":
                    detail = f"{inner.stage}: {inner.status}" + (f", {d}" if (d := describe(inner, now)) else "")
                t.add_row(line.stage, Text(line.status, style=STYLES.get(line.status, "")), spent, detail)
        return t

    def __rich__(self) -> Table:
        return self.table()


@contextlib.contextmanager
def live_progress(console: Console, quiet: bool = False, stages: Sequence[str] = ()) -> Iterator[Optional[Board]]:
    """Show the stages' progress on ``console`` while the block runs."""
    if quiet:
        yield None
        return
    board = Board(stages)
    if console.is_terminal and not console.is_dumb_terminal:
        with Live(board, console=console, refresh_per_second=4, transient=False), subscribed(board):
            yield board
        return

    def plain(ev: StageEvent) -> None:
        text = board.update(ev)
        if text:
            console.print(text, highlight=False, markup=False, soft_wrap=True)

    with subscribed(plain):
        yield board


@contextlib.contextmanager
def quiet_libraries(quiet: bool) -> Iterator[None]:
    """With ``quiet``, the libraries' info lines (MLflow's "Registered model ...") are held back too."""
    import logging

    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic", "prefect")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
