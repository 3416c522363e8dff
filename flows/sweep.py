"""Sweeps: trials over students x methods x hyperparameters that share one teacher and one cache entry.

The trials are ``sweep.trials`` (each a mapping of ``dotted.key: value`` overrides) crossed with
``sweep.grid`` (``dotted.key: [values]``). Every trial must train the same teacher on the same data;
the cache entry is shared by storing, for every trial, the union of the teacher features any trial
reads.

The fan-out runs in a subflow on the configured Prefect task runner (threads by default; Ray or
Dask for a cluster, each trial asking for ``sweep.gpus_per_trial`` GPUs):

1. the teacher and its cache entry, once;
2. each distinct pretrain and baseline stage the trials need, once (concurrently);
3. the trials, concurrently: each is the pipeline flow, whose teacher, features, pretrain and
   baseline stages are then cache hits. Two trials that would compute the same distill stage
   run one after the other, so no stage is ever computed twice at the same moment.

The result is a pandas DataFrame (one row per trial; CSV, Prefect table artifact, MLflow artifact)
and a Pareto plot of accuracy against latency and size (PNG in MLflow and as a Prefect artifact).
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd
from prefect import allow_failure, flow, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from flows.params import ConfigParam, resolve_config
from flows.pareto import pareto_mask, pareto_plot
from flows.pipeline import pipeline_flow
from flows.task_runners import gpus_per_trial, make_task_runner, trial_resources
from kdcore.config import PipelineConfig, SweepConfig, config_from_dict
from kdcore.errors import ConfigError
from kdcore.stages import teacher_paths
from tasks import events
from tasks.context import RunContext
from tasks.data import load_data
from tasks.fingerprints import fingerprint
from tasks.stage import run_stage, submit_stage

NOT_SWEPT = ("sweep", "retrain", "name", "data", "teacher", "trainer")


@dataclass
class Trial:
    index: int
    overrides: dict[str, Any]
    cfg: PipelineConfig

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={json.dumps(v)}" for k, v in self.overrides.items()) or "base config"


def expand_trials(cfg: PipelineConfig) -> list[Trial]:
    """The trials of ``cfg.sweep``: its ``trials`` crossed with its ``grid``, each validated, all
    sharing the teacher and one cache entry (the union of the features any trial reads)."""
    sweep = cfg.sweep
    if not sweep.trials and not sweep.grid:
        raise ConfigError(
            "this config has no trials to sweep: give sweep.trials (a list of overrides per trial) and/or "
            "sweep.grid ({key: [values]}), as configs/sweep.yaml does; `kdflow run` runs one pipeline"
        )
    for key in [k for t in sweep.trials for k in t] + list(sweep.grid):
        if key.split(".")[0] in NOT_SWEPT:
            raise ConfigError(
                f"sweep key {key!r}: a sweep shares one teacher, data set and trainer; "
                f"sections {', '.join(NOT_SWEPT)} cannot vary between trials"
            )
    for key, values in sweep.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.grid.{key} must be a non-empty list of values")
    base = cfg.model_dump(mode="json")
    base["sweep"] = SweepConfig().model_dump(mode="json")
    if not sweep.register_trials:
        base["register"]["enabled"] = False
    keys = list(sweep.grid)
    combos = list(itertools.product(*(sweep.grid[k] for k in keys))) or [()]
    trials: list[Trial] = []
    for extra in sweep.trials or [{}]:
        for combo in combos:
            overrides = {**extra, **dict(zip(keys, combo))}
            try:
                items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
                trial_cfg = config_from_dict(copy.deepcopy(base), items)
            except ConfigError as exc:
                raise ConfigError(f"sweep trial {len(trials)} ({overrides}): {exc}") from None
            trials.append(Trial(len(trials), overrides, trial_cfg))
    union = list(dict.fromkeys(p for t in trials for p in teacher_paths(t.cfg)))
    for t in trials:
        t.cfg = t.cfg.model_copy(update={"cache": t.cfg.cache.model_copy(update={"features": union})})
    seen: dict[str, int] = {}
    for t in trials:
        h = t.cfg.config_hash()
        if h in seen:
            raise ConfigError(f"sweep trials {seen[h]} and {t.index} are the same configuration ({t.label})")
        seen[h] = t.index
    return trials


def check_shared(trials: list[Trial], data_fp: str) -> dict[str, str]:
    """Teacher and features fingerprints, the same for every trial (else a clear error)."""
    fps = []
    for t in trials:
        teacher = fingerprint("teacher", t.cfg, data_fp, {})
        features = fingerprint("features", t.cfg, data_fp, {"teacher": {"fingerprint": teacher}})
        fps.append((teacher, features))
    for t, (teacher, features) in zip(trials, fps):
        if teacher != fps[0][0]:
            raise ConfigError(f"sweep trial {t.index} ({t.label}) trains another teacher than trial 0")
        if features != fps[0][1]:
            raise ConfigError(
                f"sweep trial {t.index} ({t.label}) needs another teacher cache entry than trial 0 "
                "(cache.* settings must be the same for all trials)"
            )
    return {"teacher": fps[0][0], "features": fps[0][1]}


def trial_scope(index: int) -> str:
    """The scope of a trial's stage events (tasks.events)."""
    return f"trial {index}"


@task(name="trial", task_run_name="trial-{index}")
def trial_task(index: int, label: str, config: dict, home: str, parent_run_id: str) -> dict[str, Any]:
    """One trial: the whole pipeline flow (a subflow of this task run). Its stages' events carry the
    scope ``trial N`` (a progress display shows a line per trial)."""
    t0 = time.perf_counter()
    scope = trial_scope(index)
    events.emit(scope, "running", message=label)
    try:
        with events.scoped(scope):
            report = pipeline_flow(config, home, parent_run_id=parent_run_id)
    except BaseException as exc:
        events.emit(scope, "failed", message=f"{type(exc).__name__}: {exc}")
        raise
    student = report["models"].get("student", {})
    events.emit(scope, "done", message=f"student top-1 {100 * student['top1']:.2f}%" if "top1" in student else "")
    return {
        "index": index,
        "label": label,
        "report": report,
        "seconds": round(time.perf_counter() - t0, 3),
        "pid": os.getpid(),
    }  # which process ran it (a Ray or Dask worker, or the flow's own)


@flow(name="kdflow-sweep-trials")
def sweep_trials_flow(trials: list[dict], data_fp: str, ctx: dict, sweep: dict) -> dict[str, Any]:
    """Shared stages once, then every trial; returns the shared stages' records and the trials' outcomes."""
    spec = SweepConfig.model_validate(sweep)
    configs = [t["config"] for t in trials]
    for t in trials:
        events.emit(trial_scope(t["index"]), "waiting", message=t["label"])
    with trial_resources(spec, spec.gpus_per_trial):
        teacher, teacher_cached = run_stage("teacher", configs[0], data_fp, ctx, {})
        features, features_cached = run_stage("features", configs[0], data_fp, ctx, {"teacher": teacher})
        upstream = {"teacher": teacher, "features": features}
        distinct: dict[tuple[str, str], Any] = {}
        for t in trials:
            cfgd = t["config"]
            cfg = PipelineConfig.model_validate(cfgd)
            with events.scoped(trial_scope(t["index"])):  # shown on the line of the first trial that needs it
                if cfg.baseline.enabled:
                    key = ("baseline", fingerprint("baseline", cfg, data_fp, {}))
                    if key not in distinct:
                        distinct[key] = submit_stage("baseline", cfgd, data_fp, ctx, {}).future
                key = ("pretrain", fingerprint("pretrain", cfg, data_fp, upstream))
                if key not in distinct:
                    distinct[key] = submit_stage("pretrain", cfgd, data_fp, ctx, upstream).future
        for future in distinct.values():
            future.wait()
        first_with: dict[str, Any] = {}
        futures = []
        for t in trials:
            cfg = PipelineConfig.model_validate(t["config"])
            pre = {"fingerprint": fingerprint("pretrain", cfg, data_fp, upstream)}
            distill_fp = fingerprint("distill", cfg, data_fp, {**upstream, "pretrain": pre})
            wait_for = [allow_failure(first_with[distill_fp])] if distill_fp in first_with else []
            future = trial_task.submit(
                t["index"],
                t["label"],
                t["config"],
                ctx["home"],
                ctx["parent_run_id"],
                wait_for=wait_for,
                return_state=False,
            )
            first_with.setdefault(distill_fp, future)
            futures.append(future)
        outcomes = []
        for t, future in zip(trials, futures):
            future.wait()
            state = future.state
            if state.is_completed():
                outcomes.append({"ok": True, **future.result()})
            else:
                outcomes.append({"ok": False, "index": t["index"], "label": t["label"], "error": _message(state)})
    return {
        "teacher": {
            "fingerprint": teacher["fingerprint"],
            "cached": teacher_cached,
            "mlflow_run_id": teacher["mlflow_run_id"],
        },
        "features": {
            "fingerprint": features["fingerprint"],
            "cached": features_cached,
            "mlflow_run_id": features["mlflow_run_id"],
        },
        "prepared": [f"{stage}:{fp[:12]}" for stage, fp in distinct],
        "trials": outcomes,
    }


def _message(state) -> str:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - the failure is reported in the table
        return f"{type(exc).__name__}: {exc}"
    return state.message or state.name


@flow(
    name="kdflow-sweep",
    description="Trials over students x methods x hyperparameters sharing one teacher "
    "and cache entry; results table and Pareto plot.",
)
def sweep_flow(
    config: ConfigParam = "configs/sweep.yaml", overrides: Optional[list[str]] = None, home: Optional[str] = None
) -> dict[str, Any]:
    cfg = resolve_config(config, overrides)
    trials = expand_trials(cfg)
    data = load_data(cfg.data)
    shared = check_shared(trials, data.fingerprint)
    run_ctx = RunContext.open(cfg.name, home)
    tracker = run_ctx.tracker()
    flow_run_id = str(flow_run.id)
    with tracker.run(
        run_ctx.experiment_id,
        f"sweep-{len(trials)}-trials",
        tags={
            "kdflow.kind": "sweep",
            "kdflow.prefect_flow_run_id": flow_run_id,
            "kdflow.data_fingerprint": data.fingerprint,
            "kdflow.teacher_fingerprint": shared["teacher"],
        },
    ) as run_id:
        tracker.log_params(run_id, {"sweep": cfg.sweep.model_dump(mode="json"), "trials": len(trials)})
        tracker.log_text(
            run_id, json.dumps([{"trial": t.index, "overrides": t.overrides} for t in trials], indent=2), "trials.json"
        )
        ctx = run_ctx.under(run_id)
        params = [{"index": t.index, "label": t.label, "config": t.cfg.model_dump(mode="json")} for t in trials]
        gpus = gpus_per_trial(cfg.sweep, cfg.trainer)
        runner = make_task_runner(cfg.sweep, len(trials), gpus)
        outcome = sweep_trials_flow.with_options(task_runner=runner)(
            params, data.fingerprint, ctx.as_dict(), {**cfg.sweep.model_dump(mode="json"), "gpus_per_trial": gpus}
        )
        table = results_table(trials, outcome["trials"])
        if cfg.sweep.profile:
            table = reprofile(table, outcome["trials"], cfg, data)
        table["pareto"] = pareto_mask(table, "top1", ["latency_ms", "size_bytes"])
        out_dir = run_ctx.home / "sweeps" / run_id
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = out_dir / "results.csv"
        table.to_csv(csv_path, index=False)
        png = pareto_plot(table, out_dir / "pareto.png", title=f"{cfg.name}: {len(trials)} trials, one teacher")
        tracker.log_artifact(run_id, csv_path)
        tracker.log_artifact(run_id, png)
        done = table[table.status == "completed"]
        if not done.empty:
            best = done.sort_values("top1", ascending=False).iloc[0]
            tracker.log_metrics(
                run_id,
                {
                    "best_top1": best.top1,
                    "best_trial": best.trial,
                    "completed_trials": len(done),
                    "failed_trials": len(table) - len(done),
                },
            )
        _prefect_artifacts(table, png, run_ctx.tracking_uri, run_id)
        failed = table[table.status != "completed"]
        if len(failed) == len(table):  # the run ends FAILED
            raise RuntimeError(f"all {len(table)} sweep trials failed; first error: {failed.iloc[0].error}")
    return {
        "mlflow_run_id": run_id,
        "prefect_flow_run_id": flow_run_id,
        "results_csv": str(csv_path),
        "pareto_png": str(png),
        "shared": {k: outcome[k] for k in ("teacher", "features", "prepared")},
        "table": json.loads(table.to_json(orient="records")),
    }


def results_table(trials: list[Trial], outcomes: list[dict]) -> pd.DataFrame:
    rows = []
    for t, o in zip(trials, outcomes):
        row: dict[str, Any] = {
            "trial": t.index,
            "label": t.label,
            "status": "completed" if o["ok"] else "failed",
            "student": t.cfg.student.arch,
            "losses": "+".join(t.cfg.distill.losses),
            "temperature": t.cfg.distill.temperature,
            "pretrain": t.cfg.pretrain.method,
        }
        if o["ok"]:
            report = o["report"]
            student = report["models"]["student"]
            row.update(
                {
                    k: student.get(k)
                    for k in (
                        "top1",
                        "top5",
                        "ece",
                        "agreement",
                        "params",
                        "size_bytes",
                        "flops",
                        "latency_ms",
                        "throughput",
                    )
                }
            )
            row["baseline_top1"] = report["models"].get("baseline", {}).get("top1")
            row["teacher_top1"] = report["models"].get("teacher", {}).get("top1")
            row["gain_vs_baseline"] = None if row["baseline_top1"] is None else row["top1"] - row["baseline_top1"]
            for stage in ("teacher", "features", "pretrain", "baseline", "distill"):
                if stage in report["stages"]:
                    row[f"{stage}_cached"] = report["stages"][stage]["cached"]
            row.update(
                {
                    "distill_fingerprint": report["stages"]["distill"]["fingerprint"],
                    "mlflow_run_id": report["mlflow_parent_run_id"],
                    "prefect_flow_run_id": report["prefect_flow_run_id"],
                    "seconds": o["seconds"],
                    "pid": o.get("pid"),
                    "error": None,
                }
            )
        else:
            row["error"] = o["error"]
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("top1", "latency_ms", "size_bytes"):
        if col not in table:
            table[col] = float("nan")
    return table


def reprofile(table: pd.DataFrame, outcomes: list[dict], cfg: PipelineConfig, data) -> pd.DataFrame:
    """Latency measured while trials ran side by side is disturbed by the others; measure every
    student again, one at a time, on the same settings as the evaluate stage."""
    from kdcore.evaluate import model_profile
    from kdcore.train.checkpoint import load_model

    table = table.copy()
    for i, o in enumerate(outcomes):
        if not o["ok"]:
            continue
        path = o["report"]["artifacts"].get("distill")
        if not path or not Path(path).is_file():
            continue
        prof = model_profile(
            load_model(path),
            tuple(data.input_shape),
            latency=True,
            throughput_batch=cfg.evaluate.throughput_batch,
            min_run_time=cfg.evaluate.min_run_time,
        )
        table.loc[i, "latency_ms"] = prof["latency_ms"]
        table.loc[i, "throughput"] = prof["throughput"]
    return table


def _prefect_artifacts(table: pd.DataFrame, png: Path, uri: str, run_id: str) -> None:
    shown = table.drop(columns=[c for c in ("distill_fingerprint", "prefect_flow_run_id") if c in table])
    rows = json.loads(shown.round(4).to_json(orient="records"))
    create_table_artifact(rows, key="kdflow-sweep", description="one row per trial (test-split metrics of the student)")
    if uri.startswith(("http://", "https://")):  # the MLflow server serves the logged PNG
        image_url = f"{uri.rstrip('/')}/get-artifact?path=pareto.png&run_uuid={run_id}"
    else:
        image_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    create_image_artifact(
        image_url=image_url,
        key="kdflow-sweep-pareto",
        description="accuracy against latency and size; red: Pareto-optimal trials",
    )
    done = table[table.status == "completed"]
    lines = [f"# kdflow sweep: {len(done)} of {len(table)} trials completed"]
    if not done.empty:
        best = done.sort_values("top1", ascending=False).iloc[0]
        front = ", ".join(str(t) for t in done[done.pareto].trial)
        lines += [
            "",
            f"Best top-1: trial {best.trial} ({best.label}) at {100 * best.top1:.2f}%.",
            f"Pareto-optimal trials (top-1 vs latency and size): {front}.",
            "",
            f"![Pareto plot]({image_url})" if image_url.startswith("http") else "",
        ]
    create_markdown_artifact("\n".join(lines), key="kdflow-sweep-summary", description="sweep summary")
