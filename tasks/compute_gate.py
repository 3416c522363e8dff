"""What may run beside a stage's torch work in one process, and what may not.

Stages of one flow run in threads of one process (side by side when ``trainer.concurrent_stages``
allows). Their compute can share the process: each pins its own thread count and draws its random
numbers from seeded generators. Tracing cannot: ``torch.export`` (MLflow's "pt2" model format) and
``torch.jit.script`` switch torch's process-wide oneDNN flag off while they trace, so a stage
training in another thread at that moment runs some steps on other kernels and its weights depend
on timing (``bench/export_race.py`` shows it). The gate lets any number of stages compute together
and lets a trace run only while none does.

Order: a stage that the rest of the flow waits on (the teacher, the distilled student) reserves
its trace as its compute ends, so its model is logged first and no new compute starts before; any
other trace (the baseline's model, beside the distillation branch) waits for a moment when nothing
computes, waits to compute or is reserved, which comes at the latest when the stages that need it
wait for its record.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class ComputeGate:
    """Shared ``computing()``, exclusive ``tracing()``; ``computing(reserve=True)`` hands its thread
    the next trace."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._computing = 0
        self._tracing = False
        self._reserved = 0
        self._compute_waiting = 0
        self._mine = threading.local()

    def _holds_reservation(self) -> bool:
        return bool(getattr(self._mine, "reserved", False))

    @contextmanager
    def computing(self, reserve: bool = False) -> Iterator[None]:
        mine = self._holds_reservation()
        with self._cond:
            self._compute_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._tracing and (mine or not self._reserved))
            finally:
                self._compute_waiting -= 1
            self._computing += 1
        try:
            yield
        finally:
            with self._cond:
                self._computing -= 1
                if reserve and not self._holds_reservation():
                    self._reserved += 1
                    self._mine.reserved = True
                self._cond.notify_all()

    @contextmanager
    def tracing(self) -> Iterator[None]:
        mine = self._holds_reservation()
        with self._cond:
            self._cond.wait_for(
                lambda: (
                    not self._tracing
                    and not self._computing
                    and (mine or (not self._reserved and not self._compute_waiting))
                )
            )
            self._tracing = True
        try:
            yield
        finally:
            self.release()
            with self._cond:
                self._tracing = False
                self._cond.notify_all()

    def release(self) -> None:
        """Drop this thread's reservation, if it holds one (after its trace, or when its stage ends
        without one: a failure between the compute and the trace)."""
        if self._holds_reservation():
            with self._cond:
                self._mine.reserved = False
                self._reserved -= 1
                self._cond.notify_all()


GATE = ComputeGate()
