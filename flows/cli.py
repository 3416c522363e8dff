"""The `kdflow` command line: run, validate, ui here; the cache group and the operations commands
in their own modules, added below (flows/console.py says how a command module is shaped)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from flows import cache_cli, ops_cli, reproduce, server_cli
from flows.console import (
    Overrides,
    ReportPath,
    Verbose,
    check_writable,
    err,
    out,
    quiet_prefect,
    user_errors,
    write_json,
)

app = typer.Typer(
    help="kdflow: knowledge distillation as a Prefect pipeline tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# a CUDA build of torch on a machine without CUDA warns "No CUDA runtime is found" when model export
# loads its C++ extension helpers: noise on every CPU run of any command
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
ConfigPath = Annotated[
    Optional[Path], typer.Argument(help="pipeline YAML (default: the shipped configs/default.yaml)", show_default=False)
]


@app.command()
def run(
    config: ConfigPath = None,
    set_: Overrides = None,
    report: ReportPath = None,
    verbose: Verbose = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress display: print only the result")] = False,
    ephemeral: Annotated[
        bool,
        typer.Option(
            "--ephemeral",
            help="use a temporary Prefect server, not the local one kdflow keeps up (also KDFLOW_PREFECT=ephemeral)",
        ),
    ] = False,
) -> None:
    """Run the pipeline: teacher -> features -> pretrain -> distill (+ baseline) -> evaluate -> register."""
    quiet_prefect(verbose)
    if ephemeral:
        os.environ["KDFLOW_PREFECT"] = "ephemeral"
    if report:
        check_writable(report, "--report")
    from flows.progress import live_progress, quiet_libraries

    with user_errors():
        from flows.runner import run_pipeline

        with quiet_libraries(quiet), live_progress(out, quiet):
            result = run_pipeline(config or DEFAULT_CONFIG, set_ or [])
    from flows.report import print_report, print_result

    (print_result if quiet else print_report)(out, result)
    if report:
        write_json(report, result)


@app.command(short_help="Check a config and its fit to the data (names, paths, shapes, checkpoint), training nothing.")
def validate(config: ConfigPath = None, set_: Overrides = None) -> None:
    """Check a config without training: fields, names, module paths, then (loading the data) the
    feature pairs' shapes and the teacher checkpoint, as `kdflow run` does before it starts."""
    from kdcore.config import load_config
    from kdcore.preflight import preflight, preflight_data
    from tasks.data import load_data

    with user_errors():
        cfg = load_config(config or DEFAULT_CONFIG, set_ or [])
        preflight(cfg)
        data = load_data(cfg.data)
        preflight_data(cfg, data)
    out.print(
        f"config OK (hash {cfg.config_hash()[:12]}); data {data.name}: {len(data.train)} train, "
        f"{len(data.val)} val, {len(data.test)} test samples of shape {tuple(data.input_shape)}, "
        f"{data.num_classes} classes"
    )


app.add_typer(cache_cli.app, name="cache")
app.add_typer(ops_cli.app)  # deploy, serve, sweep, retrain
app.add_typer(server_cli.app)  # server start|stop|status, ui
app.add_typer(reproduce.app)  # reproduce


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
