"""The kdflow DAG: teacher -> features -> pretrain -> distill -> evaluate -> register, with the
baseline student trained beside the distillation branch."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context

from kdcore.config import PipelineConfig
from tasks.baseline import baseline_task
from tasks.data import load_data
from tasks.distill import distill_task
from tasks.evaluate import evaluate_task
from tasks.export import export_task
from tasks.features import features_task
from tasks.home import kdflow_home
from tasks.pretrain import pretrain_task
from tasks.provenance import log_provenance
from tasks.records import StageRecord
from tasks.register import register_task
from tasks.teacher import teacher_task
from tasks.tracking import Tracker, check_reachable, default_tracking_uri, redact

TASKS = {"teacher": teacher_task, "features": features_task, "pretrain": pretrain_task,
         "distill": distill_task, "baseline": baseline_task, "evaluate": evaluate_task, "register": register_task}


def _outcome(state, stage: str, started: float) -> tuple[dict, dict]:
    record = state.result()  # raises the stage's exception if it failed
    cached = state.name == "Cached"
    return record, {"fingerprint": record["fingerprint"], "cached": cached,
                    "seconds": round(time.perf_counter() - started, 3),
                    "task_seconds": record["seconds"], "compute_seconds": record["info"].get("compute_seconds", 0.0),
                    "mlflow_run_id": record["mlflow_run_id"]}


@flow(name="kdflow-pipeline", description=__doc__)
def pipeline_flow(config: dict[str, Any], home: Optional[str] = None,
                  parent_run_id: Optional[str] = None) -> dict[str, Any]:
    cfg = PipelineConfig.model_validate(config)
    cfgd = cfg.model_dump(mode="json")
    home_path = Path(home) if home else kdflow_home()
    uri = default_tracking_uri(home_path)
    check_reachable(uri)
    tracker = Tracker(uri, home_path)
    experiment_id = tracker.experiment_id(cfg.name)
    flow_run_id = str(get_run_context().flow_run.id)
    parent = tracker.start_run(experiment_id, f"pipeline-{cfg.student.arch}", tags={
        "kdflow.kind": "pipeline", "kdflow.prefect_flow_run_id": flow_run_id,
        "kdflow.config_hash": cfg.config_hash()}, parent=parent_run_id)
    records: dict[str, dict] = {}
    stages: dict[str, dict] = {}
    done: dict[str, float] = {}
    try:
        tracker.log_params(parent, cfgd)
        log_provenance(tracker, parent, cfg)  # config.yaml and the code version
        data = load_data(cfg.data)
        tracker.set_tags(parent, {"kdflow.data_fingerprint": data.fingerprint})
        ctx = {"home": str(home_path), "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent}

        def inputs(stage: str) -> dict[str, dict]:
            from tasks.fingerprints import INPUTS

            return {k: records[k] for k in INPUTS[stage] if k in records}

        def run(stage: str) -> None:
            t0 = time.perf_counter()
            state = TASKS[stage](cfgd, data.fingerprint, ctx, inputs(stage), return_state=True)
            record, info = _outcome(state, stage, t0)
            if info["cached"] and not StageRecord.model_validate(record).artifact_ok():
                state = TASKS[stage].with_options(refresh_cache=True)(
                    cfgd, data.fingerprint, ctx, inputs(stage), return_state=True)
                record, info = _outcome(state, stage, t0)
            records[stage], stages[stage] = record, info

        baseline_future = None
        if cfg.baseline.enabled:
            t_base = time.perf_counter()
            baseline_future = baseline_task.submit(cfgd, data.fingerprint, ctx, {})
            baseline_future.add_done_callback(lambda _f: done.__setitem__("baseline", time.perf_counter()))
        for stage in ("teacher", "features", "pretrain", "distill"):
            run(stage)
        if baseline_future is not None:
            baseline_future.wait()
            records["baseline"], stages["baseline"] = _outcome(baseline_future.state, "baseline", t_base)
            stages["baseline"]["seconds"] = round(done.get("baseline", time.perf_counter()) - t_base, 3)
        run("evaluate")
        run("register")
        exported = None
        if cfg.export.format != "none" and cfg.register.enabled:  # the registered student, also for serving
            version = records["register"]["info"].get("registered", {}).get(cfg.register.student_name)
            exported = export_task(cfgd, ctx, records["distill"], version)
    except BaseException:
        tracker.end_run(parent, "FAILED")
        raise

    models = records["evaluate"]["info"]["models"]
    report = {
        "prefect_flow_run_id": flow_run_id, "mlflow_parent_run_id": parent, "experiment": cfg.name,
        "tracking_uri": redact(uri), "home": str(home_path), "config_hash": cfg.config_hash(),
        "data_fingerprint": data.fingerprint, "models": models, "stages": stages,
        "registered": records["register"]["info"].get("registered", {}),
        "registered_new": [] if stages["register"]["cached"] else records["register"]["info"].get("created", []),
        "export": exported, "artifacts": {s: r.get("path") for s, r in records.items()},
        "verdict": _verdict(records),
    }
    if exported:
        tracker.log_metrics(parent, {"export_max_abs_diff": exported["max_abs_diff"]})
    tracker.log_metrics(parent, {f"{m}.{k}": v for m, ms in models.items() for k, v in ms.items()})
    tracker.set_tags(parent, {f"kdflow.stage.{s}.cached": i["cached"] for s, i in stages.items()})
    tracker.log_artifact(parent, Path(records["evaluate"]["path"]))
    _prefect_summary(report)
    tracker.end_run(parent, "FINISHED")
    return report


def _verdict(records: dict[str, dict]) -> Optional[dict[str, Any]]:
    """Did distillation pay (None without a baseline), and whether registration was withheld for it."""
    v = records["evaluate"]["info"].get("verdict")
    if v is None:
        return None
    return {"pays": v["pays"], "gain": v["gain"], "margin": v["margin"], "p_value": v["p_value"],
            "message": v["message"], "advice": v["advice"],
            "withheld": records["register"]["info"].get("withheld")}


def _prefect_summary(report: dict[str, Any]) -> None:
    rows = [{"model": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}}
            for name, m in report["models"].items()]
    create_table_artifact(rows, key="kdflow-comparison", description="teacher / baseline / distilled student")
    lines = ["# kdflow pipeline", "", "| stage | cached | seconds | MLflow run |", "|---|---|---|---|"]
    lines += [f"| {s} | {i['cached']} | {i['seconds']:.1f} | {i['mlflow_run_id']} |" for s, i in report["stages"].items()]
    m = report["models"]
    if "student" in m and "baseline" in m:
        gain = 100 * (m["student"]["top1"] - m["baseline"]["top1"])
        lines += ["", f"Distilled student top-1 {100 * m['student']['top1']:.2f}% vs baseline "
                      f"{100 * m['baseline']['top1']:.2f}% ({gain:+.2f} points); teacher {100 * m['teacher']['top1']:.2f}%."]
    lines += ["", f"Registered: {report['registered']} (new versions: {report['registered_new']})"]
    create_markdown_artifact("\n".join(lines), key="kdflow-summary", description="pipeline summary")
