"""The stages of kdflow, each declared once.

A declaration says what a stage consumes (``inputs``: the upstream stages whose records it
receives, the edges of the DAG), what of the config determines its result (``reads``: the
fingerprint's config part, also logged as the MLflow run's params), whether it trains (Prefect
retries from ``trainer.retries``, the ``gpu`` concurrency tag, DDP, ``final_`` metric names) and its
``body``. The fingerprint, the Prefect task, the pipeline's order and its report all read this
table; the order of the table is an order the DAG can run in::

    teacher ──► features ──► pretrain ──► distill ──► evaluate ──► register ──► export
        (baseline, beside: no inputs; evaluate reads it when enabled)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from kdcore.config import PipelineConfig
from tasks import baseline, distill, evaluate, export, features, pretrain, register, teacher
from tasks import fingerprints as fp
from tasks.cache_entries import entries_intact
from tasks.records import StageRecord
from tasks.stage import StageCall, stage_task


def _artifact_exists(record: StageRecord, _home: Path) -> bool:
    return record.artifact_ok()


def _always(_cfg: PipelineConfig) -> bool:
    return True


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: tuple[str, ...]
    reads: Callable[[PipelineConfig], dict[str, Any]]
    body: Callable[[StageCall], dict[str, Any]]
    training: bool = False
    # a cached record is reused only while this holds (else the stage is computed again)
    intact: Callable[[StageRecord, Path], bool] = _artifact_exists
    enabled: Callable[[PipelineConfig], bool] = _always

    @cached_property
    def task(self):
        """The Prefect task (one per stage, built on first use)."""
        return stage_task(self)

    def task_for(self, cfg: PipelineConfig):
        """The task as a flow submits it for ``cfg``: a training stage retried ``trainer.retries`` times."""
        return self.task.with_options(retries=cfg.trainer.retries) if self.training else self.task

    def metric_name(self, key: str) -> str:
        """A headline metric's name in the stage's MLflow run (training stages: ``final_*``, not to
        collide with the per-epoch series)."""
        return f"final_{key}" if self.training else key

    def upstream(self, records: dict[str, Any]) -> dict[str, Any]:
        """The records among ``records`` this stage consumes."""
        return {name: records[name] for name in self.inputs if name in records}


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("teacher", inputs=(), reads=fp.teacher_reads, body=teacher.body, training=True),
        StageSpec("features", inputs=("teacher",), reads=fp.features_reads, body=features.body, intact=entries_intact),
        StageSpec(
            "pretrain", inputs=("teacher", "features"), reads=fp.pretrain_reads, body=pretrain.body, training=True
        ),
        StageSpec(
            "distill",
            inputs=("pretrain", "features", "teacher"),
            reads=fp.distill_reads,
            body=distill.body,
            training=True,
        ),
        StageSpec(
            "baseline",
            inputs=(),
            reads=fp.baseline_reads,
            body=baseline.body,
            training=True,
            enabled=lambda cfg: cfg.baseline.enabled,
        ),
        StageSpec("evaluate", inputs=("teacher", "baseline", "distill"), reads=fp.evaluate_reads, body=evaluate.body),
        StageSpec("register", inputs=("teacher", "distill", "evaluate"), reads=fp.register_reads, body=register.body),
        StageSpec(
            "export",
            inputs=("distill", "register"),
            reads=fp.export_reads,
            body=export.body,
            enabled=export.enabled,  # intact: the exported file still exists
        ),
    )
}


def stage_spec(name: str) -> StageSpec:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; the stages are {', '.join(STAGES)}") from None


def enabled_stages(cfg: PipelineConfig) -> list[StageSpec]:
    return [s for s in STAGES.values() if s.enabled(cfg)]
