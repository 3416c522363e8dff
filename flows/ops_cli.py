"""Operations commands of the `kdflow` CLI: deploy, serve, sweep, retrain.

Heavy imports (Prefect, torch) happen inside the commands so ``kdflow --help`` stays quick."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from kdcore.errors import KdflowError

console = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def quiet_prefect(verbose: bool) -> None:
    """Prefect's analytics off and its logs at WARNING unless ``--verbose`` (every command that runs flows)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")


def deploy(
    name: List[str] = typer.Option([], "--name", "-n", help="deploy only these (pipeline, sweep, retrain)"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="slots of the `gpu` task concurrency limit "
                                       "(default: the GPUs this machine sees, 1 without CUDA)"),
    pool_type: str = typer.Option("process", "--pool-type", help="process (pool kdflow-gpu), docker (kdflow-docker) "
                                  "or kubernetes (kdflow-k8s; these two need pip install 'kdflow[deploy]')"),
    image: Optional[str] = typer.Option(None, "--image", help="docker/kubernetes: the image the flow runs start in"),
    job_variable: List[str] = typer.Option([], "--job-variable", "-j", metavar="KEY=VALUE",
                                           help="job variable of every deployment, e.g. gpus=2 or "
                                           "'env={\"KDFLOW_HOME\": \"/data\"}' (values are JSON or text)"),
) -> None:
    """Create the work pool and the gpu concurrency limit, and apply deployments/prefect.yaml."""
    quiet_prefect(False)
    from flows.deploy import deploy as do_deploy, parse_job_variables

    try:
        done = do_deploy(name or None, gpus, pool_type, image=image, job_variables=parse_job_variables(job_variable))
    except KdflowError as exc:
        _fail(str(exc))
    console.print(f"Prefect API: {done['api']}")
    console.print(f"work pool {done['pool']} ({done['pool_type']}): {'created' if done['pool_created'] else 'exists'}; "
                  f"task concurrency limit on tag 'gpu': {done['gpu_limit']}")
    console.print(f"deployed: {', '.join(done['deployments'])}")
    console.print(f"next: on a GPU machine, `prefect worker start --pool {done['pool']}` "
                  "(with KDFLOW_HOME and MLFLOW_TRACKING_URI set)")


def serve(
    name: List[str] = typer.Option([], "--name", "-n", help="serve only these deployments"),
    limit: Optional[int] = typer.Option(None, "--limit", help="most flow runs at once"),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="slots of the `gpu` task concurrency limit"),
    prefect_file: Optional[Path] = typer.Option(None, "--prefect-file", help="deployments file "
                                                "(default: deployments/prefect.yaml)"),
) -> None:
    """Serve the deployments (with their schedules) from this process, until Ctrl-C."""
    quiet_prefect(True)
    from flows.deploy import PREFECT_FILE, serve as do_serve

    try:
        do_serve(name or None, limit, gpus, prefect_file.resolve() if prefect_file else PREFECT_FILE)
    except KdflowError as exc:
        _fail(str(exc))


def _home_and_params(config: Path, set_: List[str]) -> tuple[Path, dict]:
    from tasks.home import kdflow_home

    return kdflow_home(), {"config": str(config), "overrides": list(set_)}


def sweep(
    config: Path = typer.Argument(Path("configs/sweep.yaml"), help="pipeline YAML with a `sweep` section"),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="override a config value"),
    report: Optional[Path] = typer.Option(None, "--report", help="also write the result as JSON here"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Prefect's task logs"),
    runner: Optional[str] = typer.Option(None, "--runner", help="where the trials run: thread, ray or dask "
                                         "(sets sweep.task_runner; ray/dask start a local cluster)"),
    address: Optional[str] = typer.Option(None, "--address", help="an existing Ray or Dask cluster "
                                          "(sets sweep.address, e.g. tcp://scheduler:8786 or ray://head:10001)"),
) -> None:
    """Run a sweep locally: trials sharing one teacher, results table and Pareto plot."""
    quiet_prefect(verbose)
    set_ = list(set_) + ([f"sweep.task_runner={runner}"] if runner else []) + (
        [f"sweep.address={address}"] if address else [])
    try:
        from flows.params import run_locally
        from flows.sweep import sweep_flow

        home, params = _home_and_params(config, set_)
        result = run_locally(sweep_flow, home, **params, home=str(home))
    except KdflowError as exc:
        _fail(str(exc))
    import pandas as pd

    table = pd.DataFrame(result["table"])
    cols = [c for c in ("trial", "label", "status", "top1", "gain_vs_baseline", "latency_ms", "size_bytes", "pareto")
            if c in table]
    console.print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    console.print(f"results: {result['results_csv']}\nPareto plot: {result['pareto_png']}\n"
                  f"MLflow run: {result['mlflow_run_id']}")
    if report:
        report.write_text(json.dumps(result, indent=2, default=str))


def retrain(
    config: Path = typer.Argument(Path("configs/default.yaml"),
                                  help="pipeline YAML (with an optional `retrain` section)"),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="override a config value"),
    force: bool = typer.Option(False, "--force", help="retrain even if nothing changed"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Prefect's task logs"),
) -> None:
    """Retrain if due and promote the challenger only if significantly better than the champion."""
    quiet_prefect(verbose)
    try:
        from flows.params import run_locally
        from flows.retrain import retrain_flow

        home, params = _home_and_params(config, set_)
        result = run_locally(retrain_flow, home, **params, force=force, home=str(home))
    except KdflowError as exc:
        _fail(str(exc))
    d = result["decision"]
    console.print(f"decision: {d['action']} — {d['reason']}")
    console.print(f"champion: v{result['champion'] or '-'} (before: v{d['champion_before'] or '-'}); "
                  f"challenger: v{d['challenger'] or '-'}")


def register_ops_commands(app: typer.Typer) -> None:
    for fn in (deploy, serve, sweep, retrain):
        app.command(fn.__name__)(fn)
