"""The shape every stage task shares: fingerprint -> MLflow child run -> kdcore -> record.

``stage_task(spec)`` turns a stage's declaration (tasks/spec.py) into a Prefect task whose cache key
is the stage fingerprint, so an unchanged rerun skips it. ``submit_stage`` / ``finish_stage`` are
how flows run one: training stages with ``trainer.retries``, and a cached record whose artifact has
vanished or is damaged computed again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, cast
from uuid import UUID

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from kdcore.config import PipelineConfig, TrainerConfig
from kdcore.data.bundle import DataBundle
from kdcore.errors import KdflowError
from kdcore.stages import StageEnv
from kdcore.train import TrainCallbacks
from kdcore.train.ddp import device_slot, run_distributed
from kdcore.train.openmp import release_thread_pool
from tasks import events, tag_limits
from tasks.compute_gate import GATE
from tasks.context import RunContext
from tasks.data import load_data
from tasks.fingerprints import fingerprint
from tasks.home import stage_dir
from tasks.records import StageRecord
from tasks.tracking import Tracker

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

    from tasks.spec import StageSpec


class TrackingCallbacks(TrainCallbacks):
    """Per-epoch metrics to the MLflow run, a Prefect progress artifact and the stage events.

    Each epoch's metrics are written when it ends (a killed process loses none that its checkpoint
    holds); the epochs a resumed attempt copies from its checkpoint go in one write."""

    def __init__(self, tracker: Tracker, run_id: str, stage: str) -> None:
        self.tracker, self.run_id, self.stage = tracker, run_id, stage
        self.max_epochs = 1
        self.artifact_id: Optional[UUID] = None

    def on_fit_start(self, start_epoch: int, max_epochs: int) -> None:
        self.max_epochs = max_epochs
        try:
            # a sync caller: async_dispatch runs it and returns the UUID, never a coroutine
            self.artifact_id = cast(
                UUID,
                create_progress_artifact(
                    100.0 * start_epoch / max_epochs, description=f"{self.stage}: epoch {start_epoch}/{max_epochs}"
                ),
            )
        except Exception:  # noqa: BLE001 - progress display must never break training
            self.artifact_id = None

    def on_resume(self, history: list[dict[str, float]]) -> None:
        """Log the trained epochs this run does not hold yet: a retried attempt whose predecessor
        checkpointed an epoch but failed while logging it loses no metric."""
        logged = self.tracker.logged_steps(self.run_id, "train_loss")
        missing = [(epoch, metrics) for epoch, metrics in enumerate(history) if epoch not in logged]
        if missing:
            self.tracker.log_metric_steps(self.run_id, missing)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step=epoch)
        events.emit(self.stage, "epoch", epoch=epoch, max_epochs=self.max_epochs, metrics=dict(metrics))
        if self.artifact_id is not None:
            try:
                update_progress_artifact(
                    self.artifact_id,
                    100.0 * (epoch + 1) / self.max_epochs,
                    description=f"{self.stage}: epoch {epoch + 1}/{self.max_epochs}",
                )
            except Exception:  # noqa: BLE001
                pass

    def on_progress(self, what: str, done: int, total: int) -> None:
        events.emit(self.stage, "progress", what=what, done=done, total=total)


# stages whose model logging the rest of the flow waits on: their trace goes before a side branch's
CRITICAL_TRACES = ("teacher", "distill")


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
    parent_run_id: Optional[str]
    training: bool = False
    compute_seconds: float = 0.0
    reserve_trace: bool = False  # the stage logs its model next and the flow waits on it (compute_gate)

    def timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call a kdcore function, adding its wall time to ``compute_seconds``; other stages may
        compute beside it, no trace may (:mod:`tasks.compute_gate`)."""
        with GATE.computing(reserve=self.reserve_trace):
            return self._timed(fn, *args, **kwargs)

    def timed_alone(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """:meth:`timed` for a function that traces the model (``torch.jit``/``torch.export``): it
        runs while no other stage computes."""
        with GATE.tracing():
            return self._timed(fn, *args, **kwargs)

    def _timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            t = self.cfg.trainer
            if self.training and (t.devices > 1 or t.nnodes > 1):  # DDP through torchrun, a process per device
                return run_distributed(
                    fn,
                    *args,
                    world_size=t.devices,
                    device=self.env.device,
                    nnodes=t.nnodes,
                    rdzv_endpoint=t.rdzv_endpoint,
                    **kwargs,
                )
            return fn(*args, **kwargs)
        finally:
            self.compute_seconds += time.perf_counter() - t0


def _key(spec: "StageSpec") -> Callable[[Any, dict[str, Any]], str]:
    def key(_ctx: Any, params: dict[str, Any]) -> str:
        cfg = PipelineConfig.model_validate(params["cfg"])
        return f"{spec.name}-{fingerprint(spec, cfg, params['data_fp'], params['inputs'])}"

    return key


def _no_retry_on_user_error(_task, _run, state) -> bool:
    try:
        state.result()
    except KdflowError:
        return False
    except Exception:  # noqa: BLE001
        return True
    return True


def stage_task(spec: "StageSpec"):
    """The Prefect task of a declared stage. Its parameters stay plain JSON (``ctx`` is a
    :class:`RunContext` as a dict) so cache keys and stored results stay stable."""

    def run(cfg: dict, data_fp: str, ctx: dict, inputs: dict) -> dict:
        t0 = time.perf_counter()
        events.emit(spec.name, "running")
        try:
            record = _run_body(spec, PipelineConfig.model_validate(cfg), data_fp, RunContext.from_dict(ctx), inputs, t0)
        except BaseException as exc:
            events.emit(spec.name, "failed", message=f"{type(exc).__name__}: {exc}")
            raise
        finally:  # this worker thread's OpenMP pool would idle beside the next stage's (kdcore/train/openmp.py)
            release_thread_pool()
        events.emit(spec.name, "done", metrics=dict(record.metrics))
        return record.model_dump(mode="json")

    run.__name__ = f"{spec.name}_task"
    return task(
        name=spec.name,
        cache_key_fn=_key(spec),
        persist_result=True,
        retries=1 if spec.training else 0,  # the default of trainer.retries; flows set the configured one
        retry_delay_seconds=1,
        retry_condition_fn=_no_retry_on_user_error,
        tags=["gpu"] if spec.training else None,
    )(run)


def _run_body(
    spec: "StageSpec", config: PipelineConfig, data_fp: str, ctx: RunContext, inputs: dict, t0: float
) -> StageRecord:
    fp = fingerprint(spec, config, data_fp, inputs)
    tracker = ctx.tracker()
    retried = _failed_attempt(tracker, ctx, spec.name, fp)
    tags = (
        {"kdflow.attempts": str(_attempt())}
        if retried
        else {"kdflow.stage": spec.name, "kdflow.fingerprint": fp, "kdflow.data_fingerprint": data_fp}
    )
    with tracker.run(ctx.experiment_id, spec.name, parent=ctx.parent_run_id, tags=tags, run_id=retried) as run_id:
        tracker.log_params(run_id, {"stage": spec.name, "data": config.section("data"), **spec.reads(config)})
        data = load_data(config.data)
        env = StageEnv(config, data, stage_dir(ctx.home, spec.name, fp), TrackingCallbacks(tracker, run_id, spec.name))
        call = StageCall(
            spec.name,
            config,
            data,
            env,
            tracker,
            run_id,
            fp,
            {k: StageRecord.model_validate(v) for k, v in inputs.items()},
            ctx.home,
            ctx.parent_run_id,
            training=spec.training,
            reserve_trace=spec.name in CRITICAL_TRACES,
        )
        # concurrent stages spread over the visible GPUs, across processes and workers
        with device_slot(config.trainer.device, count=config.trainer.devices, lock_dir=ctx.home / "locks" / "devices"):
            try:
                fields = spec.body(call)
            finally:
                GATE.release()
        fields.setdefault("info", {})["compute_seconds"] = round(call.compute_seconds, 3)
        record = StageRecord(
            stage=spec.name, fingerprint=fp, mlflow_run_id=run_id, seconds=round(time.perf_counter() - t0, 3), **fields
        )
        tracker.log_metrics(
            run_id,
            {**{spec.metric_name(k): v for k, v in record.metrics.items()}, "stage_seconds": record.seconds},
            tags={"kdflow.artifact_sha256": record.sha256 or ""},
        )
    return record


def _attempt() -> int:
    from prefect.runtime import task_run

    return task_run.run_count or 1


def _failed_attempt(tracker: Tracker, ctx: RunContext, stage: str, fp: str) -> Optional[str]:
    """On Prefect's retry of a task, the MLflow run its failed attempt left behind: the retry
    resumes training from the last checkpoint and keeps logging into the same run (reopened), so
    the stage's per-epoch metrics stay in one place and the run ends FINISHED."""
    if _attempt() <= 1 or not ctx.parent_run_id:
        return None
    return tracker.failed_run(ctx.experiment_id, ctx.parent_run_id, stage, fp)


# ---- running a stage from a flow -------------------------------------------------------------

# the widest point of the pipeline's DAG: the distillation branch and the baseline student
BRANCHES = 2


def runs_concurrently(trainer: TrainerConfig, branches: int = BRANCHES) -> bool:
    """Whether a flow runs independent stages side by side (``trainer.concurrent_stages``).

    ``auto``: on the CPU, one after the other (measured by bench/schedule.py on the 2-core
    development machine, default config: 33.9 s against 36.7 s side by side, once idle OpenMP pools
    stopped slowing each stage (kdcore/train/openmp.py; before that, side by side won, 39.7 s
    against 44.2 s): two stages that each use every core only contend); on GPUs, only when each of the ``branches`` gets
    GPUs of its own (``auto``/``cuda`` with at least ``branches * trainer.devices`` visible GPUs,
    which :func:`device_slot` hands out distinct), one after the other on MPS or one shared GPU.
    Either way the weights are the same (:mod:`tasks.compute_gate`)."""
    if trainer.concurrent_stages != "auto":
        return bool(trainer.concurrent_stages)
    import torch

    if trainer.device not in ("auto", "cuda"):  # the CPU, MPS, one named GPU
        return False
    if trainer.device == "auto" and not torch.cuda.is_available():
        return False  # auto resolves to the CPU or MPS
    return torch.cuda.is_available() and torch.cuda.device_count() >= branches * trainer.devices


@dataclass
class SubmittedStage:
    """A stage task submitted to the flow's task runner, with what it was called with."""

    spec: "StageSpec"
    cfg: dict
    data_fp: str
    ctx: dict
    inputs: dict
    future: "PrefectFuture"
    started: float = field(default_factory=time.perf_counter)
    finished: Optional[float] = None

    def _watch(self) -> None:
        self.finished = None
        self.future.add_done_callback(lambda _f: setattr(self, "finished", time.perf_counter()))

    @property
    def seconds(self) -> float:
        return round((self.finished or time.perf_counter()) - self.started, 3)


def submit_stage(
    stage: "str | StageSpec", cfg: dict, data_fp: str, ctx: "RunContext | dict", inputs: dict, refresh: bool = False
) -> SubmittedStage:
    """Submit a stage's task (a training stage with the config's ``trainer.retries``)."""
    from tasks.spec import stage_spec

    spec = stage_spec(stage) if isinstance(stage, str) else stage
    ctx_d = RunContext.from_dict(ctx).as_dict()
    inputs = spec.upstream(inputs)
    task_ = spec.task_for(PipelineConfig.model_validate(cfg))
    if task_.tags and (kept := tag_limits.needed(task_.tags)) != set(task_.tags):
        task_ = task_.with_options(tags=kept)  # a tag without a limit only costs slot requests
    if refresh:
        task_ = task_.with_options(refresh_cache=True)
    sub = SubmittedStage(spec, cfg, data_fp, ctx_d, inputs, task_.submit(cfg, data_fp, ctx_d, inputs))
    sub._watch()
    return sub


def finish_stage(sub: SubmittedStage) -> tuple[dict, bool]:
    """Wait for a submitted stage: (its record, whether it was a cache hit). A failed stage raises
    its exception. A cached record whose artifact has vanished or is damaged (the stage spec says
    what "intact" means) is computed again."""
    release_thread_pool()  # the waiting thread's pool (e.g. the flow's, from loading data) would slow the stage
    sub.future.wait()
    record = sub.future.result()  # raises the stage's exception if it failed
    cached = sub.future.state.name == "Cached"
    if cached and not sub.spec.intact(StageRecord.model_validate(record), Path(sub.ctx["home"])):
        again = submit_stage(sub.spec, sub.cfg, sub.data_fp, sub.ctx, sub.inputs, refresh=True)
        sub.future, cached = again.future, False
        sub._watch()
        sub.future.wait()
        record = sub.future.result()
    if cached:
        events.emit(sub.spec.name, "cached")
    return record, cached


def run_stage(
    stage: "str | StageSpec", cfg: dict, data_fp: str, ctx: "RunContext | dict", inputs: dict
) -> tuple[dict, bool]:
    """Submit a stage and wait for it (see :func:`finish_stage`)."""
    return finish_stage(submit_stage(stage, cfg, data_fp, ctx, inputs))
