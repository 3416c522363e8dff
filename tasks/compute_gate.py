"""What may run beside a stage's torch work in one process, and what may not.

Stages of one flow run in threads of one process (side by side when ``trainer.concurrent_stages``
allows). Their compute can share the process: each pins its own thread count and draws its random
numbers from seeded generators. Tracing cannot: ``torch.export`` (MLflow's "pt2" model format) and
``torch.jit.script`` switch torch's process-wide oneDNN flag off while they trace, so a stage
training in another thread at that moment runs some steps on other kernels and its weights depend
on timing (``bench/export_race.py`` shows it). The gate lets any number of stages compute together
and lets a trace run only while none does; a waiting trace goes first (new compute waits for it),
so a stage that has finished training logs its model as soon as the stages already running finish.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class ComputeGate:
    """A readers-writer lock: ``computing()`` is shared, ``tracing()`` exclusive and preferred."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._computing = 0
        self._tracing = False
        self._traces_waiting = 0

    @contextmanager
    def computing(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._tracing and not self._traces_waiting)
            self._computing += 1
        try:
            yield
        finally:
            with self._cond:
                self._computing -= 1
                self._cond.notify_all()

    @contextmanager
    def tracing(self) -> Iterator[None]:
        with self._cond:
            self._traces_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._tracing and not self._computing)
            finally:
                self._traces_waiting -= 1
            self._tracing = True
        try:
            yield
        finally:
            with self._cond:
                self._tracing = False
                self._cond.notify_all()


GATE = ComputeGate()
