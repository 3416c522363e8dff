"""The kdflow DAG, as the stage declarations (tasks/spec.py) draw it::

    teacher ──► features ──► pretrain ──► distill ──► evaluate ──► register
          └──────────────── baseline student ───────────────┘

Where stages run side by side (``trainer.concurrent_stages``; ``auto``: when each branch gets GPUs of
its own) every stage is submitted as soon as the records it consumes exist, so the baseline student
trains beside the distillation branch; otherwise (the CPU, one device) they run one after the other in
the declared order, and a stage waiting its turn shows as waiting."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.report import summary_markdown
from kdcore.config import PipelineConfig
from kdcore.data.bundle import DataBundle
from kdcore.data.stream import ImageFileSplit
from kdcore.train.batches import start_worker_server
from tasks import events
from tasks.context import RunContext
from tasks.data import for_data, load_data
from tasks.provenance import log_provenance
from tasks.spec import StageSpec, enabled_stages
from tasks.stage import SubmittedStage, finish_stage, runs_concurrently, submit_stage
from tasks.uris import redact


@flow(name="kdflow-pipeline", description=__doc__)
def pipeline_flow(
    config: dict[str, Any], home: Optional[str] = None, parent_run_id: Optional[str] = None
) -> dict[str, Any]:
    cfg = PipelineConfig.model_validate(config)
    cfgd = cfg.model_dump(mode="json")
    stages = enabled_stages(cfg)
    concurrent = runs_concurrently(cfg.trainer)
    for spec in stages:
        events.emit(spec.name, "waiting")
    ctx = RunContext.open(cfg.name, home)
    tracker = ctx.tracker()
    flow_run_id = str(flow_run.id)
    with tracker.run(
        ctx.experiment_id,
        f"pipeline-{cfg.student.arch}",
        parent=parent_run_id,
        tags={
            "kdflow.kind": "pipeline",
            "kdflow.prefect_flow_run_id": flow_run_id,
            "kdflow.config_hash": cfg.config_hash(),
            "kdflow.schedule": _schedule(concurrent),
        },
    ) as parent:
        ctx = ctx.under(parent)
        tracker.log_params(parent, cfgd)
        log_provenance(tracker, parent, cfg)  # config.yaml and the code version
        data = load_data(cfg.data)
        warm_loader_workers(data)  # run_pipeline did, where it started the flow
        tracker.set_tags(parent, {"kdflow.data_fingerprint": data.fingerprint})

        stage_cfgd = for_data(cfg, data).model_dump(mode="json")
        records, outcomes = run_stages(stages, stage_cfgd, data.fingerprint, ctx, concurrent=concurrent)

        exported = records["export"]["info"] if "export" in records else None  # the registered student, for serving

        models = records["evaluate"]["info"]["models"]
        report = {
            "prefect_flow_run_id": flow_run_id,
            "mlflow_parent_run_id": parent,
            "experiment": cfg.name,
            "tracking_uri": redact(ctx.tracking_uri),
            "home": str(ctx.home),
            "config_hash": cfg.config_hash(),
            "data_fingerprint": data.fingerprint,
            "models": models,
            "stages": outcomes,
            "schedule": _schedule(concurrent),
            "registered": records["register"]["info"].get("registered", {}),
            "registered_new": [] if outcomes["register"]["cached"] else records["register"]["info"].get("created", []),
            "export": exported,
            "artifacts": {s: r.get("path") for s, r in records.items()},
            "verdict": _verdict(records),
        }
        if exported:
            tracker.log_metrics(parent, {"export_max_abs_diff": exported["max_abs_diff"]})
        tracker.log_metrics(parent, {f"{m}.{k}": v for m, ms in models.items() for k, v in ms.items()})
        tracker.set_tags(parent, {f"kdflow.stage.{s}.cached": i["cached"] for s, i in outcomes.items()})
        tracker.log_artifact(parent, Path(records["evaluate"]["path"]))
        _prefect_summary(report)
    return report


def warm_loader_workers(data: DataBundle) -> None:
    """Streamed data read by DataLoader workers: start their server now (:func:`start_worker_server`),
    so that its imports overlap the flow's start instead of delaying the first stage's first pass."""
    if isinstance(data.train, ImageFileSplit) and data.train.num_workers:
        start_worker_server()


def _schedule(concurrent: bool) -> str:
    return "concurrent" if concurrent else "sequential"


def run_stages(
    stages: list[StageSpec], cfgd: dict, data_fp: str, ctx: RunContext, concurrent: bool = True
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Run ``stages`` (in declaration order, which respects their inputs): ``concurrent``, each is
    submitted once every enabled stage it consumes has its record; otherwise one at a time, in
    declaration order (fixed, so the order is the same run after run). The first stage to fail stops
    the flow. Returns the records and, per stage, what the report shows (in declaration order)."""
    enabled = {s.name for s in stages}
    records: dict[str, dict] = {}
    outcomes: dict[str, dict] = {}
    running: dict[str, SubmittedStage] = {}
    todo = list(stages)
    while todo or running:
        ready = [s for s in todo if all(i in records for i in s.inputs if i in enabled)]
        if not concurrent:
            ready = [] if running else ready[:1]
        for spec in ready:
            todo.remove(spec)
            running[spec.name] = submit_stage(spec, cfgd, data_fp, ctx, records)
        name = next(s.name for s in stages if s.name in running)  # the earliest declared first
        sub = running.pop(name)
        records[name], cached = finish_stage(sub)
        outcomes[name] = _outcome(records[name], cached, sub.seconds)
    return records, {s.name: outcomes[s.name] for s in stages}


def _outcome(record: dict, cached: bool, seconds: float) -> dict:
    return {
        "fingerprint": record["fingerprint"],
        "cached": cached,
        "seconds": seconds,
        "task_seconds": record["seconds"],
        "compute_seconds": record["info"].get("compute_seconds", 0.0),
        "mlflow_run_id": record["mlflow_run_id"],
    }


def _verdict(records: dict[str, dict]) -> Optional[dict[str, Any]]:
    """Did distillation pay (None without a baseline), and whether registration was withheld for it."""
    v = records["evaluate"]["info"].get("verdict")
    if v is None:
        return None
    return {
        "pays": v["pays"],
        "gain": v["gain"],
        "margin": v["margin"],
        "p_value": v["p_value"],
        "message": v["message"],
        "advice": v["advice"],
        "withheld": records["register"]["info"].get("withheld"),
    }


def _prefect_summary(report: dict[str, Any]) -> None:
    rows = [
        {"model": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}}
        for name, m in report["models"].items()
    ]
    create_table_artifact(rows, key="kdflow-comparison", description="teacher / baseline / distilled student")
    create_markdown_artifact(summary_markdown(report), key="kdflow-summary", description="pipeline summary")
