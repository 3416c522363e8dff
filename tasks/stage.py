"""The shape every stage task shares: fingerprint -> MLflow child run -> kdcore -> record.

``stage_task(stage, body)`` turns a body ``body(call) -> StageRecord fields`` into a Prefect task
whose cache key is the stage fingerprint, so an unchanged rerun skips it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from kdcore.config import PipelineConfig
from kdcore.data.bundle import DataBundle
from kdcore.errors import KdflowError
from kdcore.stages import StageEnv
from kdcore.train import TrainCallbacks
from kdcore.train.ddp import device_slot, run_distributed
from tasks.data import load_data
from tasks.fingerprints import fingerprint
from tasks.home import stage_dir
from tasks.records import StageRecord
from tasks.tracking import Tracker

TRAINING_STAGES = {"teacher", "pretrain", "distill", "baseline"}


class TrackingCallbacks(TrainCallbacks):
    """Per-epoch metrics to the MLflow run and a Prefect progress artifact."""

    def __init__(self, tracker: Tracker, run_id: str, stage: str) -> None:
        self.tracker, self.run_id, self.stage = tracker, run_id, stage
        self.max_epochs = 1
        self.artifact_id = None

    def on_fit_start(self, start_epoch: int, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        try:
            self.artifact_id = create_progress_artifact(
                100.0 * start_epoch / max_epochs, description=f"{self.stage}: epoch {start_epoch}/{max_epochs}")
        except Exception:  # noqa: BLE001 - progress display must never break training
            self.artifact_id = None

    def on_resume(self, history: list[dict[str, float]]) -> None:
        """Log the trained epochs this run does not hold yet: a retried attempt whose predecessor
        checkpointed an epoch but failed while logging it loses no metric."""
        logged = self.tracker.logged_steps(self.run_id, "train_loss")
        for epoch, metrics in enumerate(history):
            if epoch not in logged:
                self.tracker.log_metrics(self.run_id, metrics, step=epoch)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step=epoch)
        if self.artifact_id is not None:
            try:
                update_progress_artifact(self.artifact_id, 100.0 * (epoch + 1) / self.max_epochs,
                                         description=f"{self.stage}: epoch {epoch + 1}/{self.max_epochs}")
            except Exception:  # noqa: BLE001
                pass


@dataclass
class StageCall:
    """Everything a stage body needs."""

    stage: str
    cfg: PipelineConfig
    data: DataBundle
    env: StageEnv
    tracker: Tracker
    run_id: str
    fingerprint: str
    inputs: dict[str, StageRecord]
    home: Path
    parent_run_id: str
    compute_seconds: float = 0.0

    def timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a kdcore function, adding its wall time to ``compute_seconds``."""
        t0 = time.perf_counter()
        try:
            if self.stage in TRAINING_STAGES and self.cfg.trainer.devices > 1:  # DDP, one process per device
                return run_distributed(fn, *args, world_size=self.cfg.trainer.devices, device=self.env.device,
                                       **kwargs)
            return fn(*args, **kwargs)
        finally:
            self.compute_seconds += time.perf_counter() - t0


def _key(stage: str) -> Callable[[Any, dict[str, Any]], str]:
    def key(_ctx: Any, params: dict[str, Any]) -> str:
        cfg = PipelineConfig.model_validate(params["cfg"])
        return f"{stage}-{fingerprint(stage, cfg, params['data_fp'], params['inputs'])}"

    return key


def _no_retry_on_user_error(_task, _run, state) -> bool:
    try:
        state.result()
    except KdflowError:
        return False
    except Exception:  # noqa: BLE001
        return True
    return True


def stage_task(stage: str, body: Callable[[StageCall], dict[str, Any]]):
    def run(cfg: dict, data_fp: str, ctx: dict, inputs: dict) -> dict:
        t0 = time.perf_counter()
        config = PipelineConfig.model_validate(cfg)
        fp = fingerprint(stage, config, data_fp, inputs)
        home = Path(ctx["home"])
        tracker = Tracker(ctx["tracking_uri"], home)
        run_id = _retried_run(tracker, ctx, stage, fp) or tracker.start_run(
            ctx["experiment_id"], stage, parent=ctx["parent_run_id"],
            tags={"kdflow.stage": stage, "kdflow.fingerprint": fp, "kdflow.data_fingerprint": data_fp})
        try:
            tracker.log_params(run_id, {"stage": stage, **_params(stage, config)})
            data = load_data(config.data)
            env = StageEnv(config, data, stage_dir(home, stage, fp), TrackingCallbacks(tracker, run_id, stage))
            call = StageCall(stage, config, data, env, tracker, run_id, fp,
                             {k: StageRecord.model_validate(v) for k, v in inputs.items()}, home,
                             ctx["parent_run_id"])
            with device_slot(config.trainer.device, count=config.trainer.devices,  # concurrent stages spread over
                             lock_dir=home / "locks" / "devices"):  # the GPUs, across processes
                fields = body(call)
            fields.setdefault("info", {})["compute_seconds"] = round(call.compute_seconds, 3)
            record = StageRecord(stage=stage, fingerprint=fp, mlflow_run_id=run_id,
                                 seconds=round(time.perf_counter() - t0, 3), **fields)
            final = {(f"final_{k}" if stage in TRAINING_STAGES else k): v for k, v in record.metrics.items()}
            tracker.log_metrics(run_id, {**final, "stage_seconds": record.seconds})
            tracker.set_tags(run_id, {"kdflow.artifact_sha256": record.sha256 or ""})
        except BaseException:
            tracker.end_run(run_id, "FAILED")
            raise
        tracker.end_run(run_id, "FINISHED")
        return record.model_dump(mode="json")

    run.__name__ = f"{stage}_task"
    retries = 1 if stage in TRAINING_STAGES else 0
    return task(run, name=stage, cache_key_fn=_key(stage), persist_result=True, retries=retries,
                retry_delay_seconds=1, retry_condition_fn=_no_retry_on_user_error,
                tags=["gpu"] if stage in TRAINING_STAGES else None)


def _retried_run(tracker: Tracker, ctx: dict, stage: str, fp: str) -> str | None:
    """On Prefect's retry of a task, the MLflow run its failed attempt left behind, reopened: the
    retry resumes training from the last checkpoint and keeps logging into the same run, so the
    stage's per-epoch metrics stay in one place and the run ends FINISHED."""
    from prefect.runtime import task_run

    if (task_run.run_count or 1) <= 1 or not ctx.get("parent_run_id"):
        return None
    run_id = tracker.failed_run(ctx["experiment_id"], ctx["parent_run_id"], stage, fp)
    if run_id is None:
        return None
    tracker.reopen_run(run_id)
    tracker.set_tags(run_id, {"kdflow.attempts": str(task_run.run_count)})
    return run_id


def _params(stage: str, cfg: PipelineConfig) -> dict[str, Any]:
    from tasks.fingerprints import stage_section

    return {"data": cfg.section("data"), **stage_section(stage, cfg)}
