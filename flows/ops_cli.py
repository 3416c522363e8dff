"""Operations commands of the `kdflow` CLI: deploy, serve, sweep, retrain.

Heavy imports (Prefect, torch) happen inside the commands so ``kdflow --help`` stays quick."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from flows.console import Overrides, ReportPath, Verbose, check_writable, out, quiet_prefect, user_errors, write_json

app = typer.Typer()

Names = Annotated[Optional[list[str]], typer.Option("--name", "-n", help="only these (pipeline, sweep, retrain)")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress display: print only the result")]
Gpus = Annotated[
    Optional[int],
    typer.Option(
        "--gpus", help="slots of the `gpu` task concurrency limit (default: the GPUs this machine sees, 1 without CUDA)"
    ),
]


@app.command()
def deploy(
    name: Names = None,
    gpus: Gpus = None,
    pool_type: Annotated[
        str,
        typer.Option(
            "--pool-type",
            help="process (pool kdflow-gpu), docker (kdflow-docker) or kubernetes (kdflow-k8s; these two need "
            "pip install 'kdflow\\[deploy]')",
        ),
    ] = "process",
    image: Annotated[
        Optional[str], typer.Option("--image", help="docker/kubernetes: the image the flow runs start in")
    ] = None,
    job_variable: Annotated[
        Optional[list[str]],
        typer.Option(
            "--job-variable",
            "-j",
            metavar="KEY=VALUE",
            help='job variable of every deployment, e.g. gpus=2 or \'env={"KDFLOW_HOME": "/data"}\' '
            "(values are JSON or text)",
        ),
    ] = None,
) -> None:
    """Create the work pool and the gpu concurrency limit, and apply deployments/prefect.yaml."""
    quiet_prefect(False)
    from flows.deploy import deploy as do_deploy
    from flows.deploy import parse_job_variables

    with user_errors():
        done = do_deploy(
            name or None, gpus, pool_type, image=image, job_variables=parse_job_variables(list(job_variable or []))
        )
    out.print(f"Prefect API: {done['api']}")
    out.print(
        f"work pool {done['pool']} ({done['pool_type']}): {'created' if done['pool_created'] else 'exists'}; "
        f"task concurrency limit on tag 'gpu': {done['gpu_limit']}"
    )
    out.print(f"deployed: {', '.join(done['deployments'])}")
    out.print(
        f"next: on a GPU machine, `prefect worker start --pool {done['pool']}` "
        "(with KDFLOW_HOME and MLFLOW_TRACKING_URI set)"
    )


@app.command()
def serve(
    name: Names = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="most flow runs at once")] = None,
    gpus: Gpus = None,
    prefect_file: Annotated[
        Optional[Path], typer.Option("--prefect-file", help="deployments file (default: deployments/prefect.yaml)")
    ] = None,
) -> None:
    """Serve the deployments (with their schedules) from this process, until Ctrl-C."""
    quiet_prefect(True)
    from flows.deploy import PREFECT_FILE
    from flows.deploy import serve as do_serve

    with user_errors():
        do_serve(name or None, limit, gpus, prefect_file.resolve() if prefect_file else PREFECT_FILE)


def _run_flow(flow: str, config: Path, set_: Optional[list[str]], quiet: bool, **params: Any) -> Any:
    """Run the sweep or retrain flow in this process, its task results under KDFLOW_HOME, with the
    live progress display (flows/progress.py) unless ``quiet``. The config is checked first, so a
    bad one fails with its message before Prefect starts."""
    with user_errors():
        from flows.params import resolve_config, run_locally
        from flows.progress import live_progress, quiet_libraries
        from flows.retrain import retrain_flow
        from flows.sweep import sweep_flow
        from tasks.home import kdflow_home

        resolve_config(str(config), list(set_ or []))
        flow_fn: Any = {"sweep": sweep_flow, "retrain": retrain_flow}[flow]
        home = kdflow_home()
        with quiet_libraries(quiet), live_progress(out, quiet):
            return run_locally(flow_fn, home, config=str(config), overrides=list(set_ or []), home=str(home), **params)


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="pipeline YAML with a `sweep` section")] = Path("configs/sweep.yaml"),
    set_: Overrides = None,
    report: ReportPath = None,
    verbose: Verbose = False,
    runner: Annotated[
        Optional[str],
        typer.Option(
            "--runner",
            help="where the trials run: thread, ray or dask (sets sweep.task_runner; ray/dask start a local cluster)",
        ),
    ] = None,
    address: Annotated[
        Optional[str],
        typer.Option(
            "--address",
            help="an existing Ray or Dask cluster (sets sweep.address, e.g. tcp://scheduler:8786 or ray://head:10001)",
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Run a sweep locally: trials sharing one teacher, results table and Pareto plot."""
    quiet_prefect(verbose)
    set_ = (
        list(set_ or [])
        + ([f"sweep.task_runner={runner}"] if runner else [])
        + ([f"sweep.address={address}"] if address else [])
    )
    if report:
        check_writable(report, "--report")
    result = _run_flow("sweep", config, set_, quiet)
    from flows.report import sweep_table

    out.print(sweep_table(result["table"]))
    out.print(  # soft_wrap: a long path stays whole on its line (a terminal folds it; a file keeps it)
        f"results: {result['results_csv']}\nPareto plot: {result['pareto_png']}\nMLflow run: {result['mlflow_run_id']}",
        soft_wrap=True,
    )
    if report:
        write_json(report, result)


@app.command()
def retrain(
    config: Annotated[Path, typer.Argument(help="pipeline YAML (with an optional `retrain` section)")] = Path(
        "configs/default.yaml"
    ),
    set_: Overrides = None,
    force: Annotated[
        bool, typer.Option("--force", help="retrain even if nothing changed: a fresh training with a new trainer.seed")
    ] = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Retrain if due and promote the challenger only if significantly better than the champion."""
    quiet_prefect(verbose)
    result = _run_flow("retrain", config, set_, quiet, force=force)
    d = result["decision"]
    out.print(f"decision: {d['action']} — {d['reason']}")
    out.print(retrain_summary(result))


def retrain_summary(result: dict) -> str:
    """Where the aliases point after a retrain, in words: the version trained this time is named as
    promoted or as holding the alias ``challenger``, never "challenger" once it is the champion."""
    d = result["decision"]

    def version(v: object) -> str:
        return f"v{v}" if v else "none"

    line = f"champion: {version(result['champion'])} (before: {version(d['champion_before'])})"
    trained = d["challenger"]
    if not trained:
        return f"{line}; no new version"
    if str(trained) == str(result["champion"]):
        return f"{line}; {version(trained)} promoted"
    return f"{line}; challenger: {version(trained)} (alias challenger)"
