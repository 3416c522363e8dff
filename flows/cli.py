"""The `kdflow` command line."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from flows.ops_cli import quiet_prefect
from kdcore.errors import KdflowError

app = typer.Typer(help="kdflow: knowledge distillation as a Prefect pipeline tracked in MLflow.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="pipeline YAML (default: the shipped configs/default.yaml)"),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="override a config value, e.g. distill.temperature=4"),
    report: Optional[Path] = typer.Option(None, "--report", help="also write the results as JSON here"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Prefect's task logs"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display: print only the result"),
    ephemeral: bool = typer.Option(False, "--ephemeral", help="use a temporary Prefect server, not the local one "
                                   "kdflow keeps up (also KDFLOW_PREFECT=ephemeral)"),
) -> None:
    """Run the pipeline: teacher -> features -> pretrain -> distill (+ baseline) -> evaluate -> register."""
    quiet_prefect(verbose)
    if ephemeral:
        os.environ["KDFLOW_PREFECT"] = "ephemeral"
    from flows.progress import live_progress, quiet_libraries

    try:
        from flows.runner import run_pipeline

        with quiet_libraries(quiet), live_progress(console, quiet):
            result = run_pipeline(config or DEFAULT_CONFIG, set_)
    except KdflowError as exc:
        fail(str(exc))
    from flows.report import print_report, print_result

    (print_result if quiet else print_report)(console, result)
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2, default=str))
        if not quiet:
            console.print(f"report written to {report}")


@app.command()
def validate(
    config: Optional[Path] = typer.Argument(None, help="pipeline YAML"),
    set_: List[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help="override a config value"),
) -> None:
    """Check a config (fields, names, module paths) without running anything."""
    from kdcore.config import load_config
    from kdcore.preflight import preflight

    try:
        cfg = load_config(config or DEFAULT_CONFIG, set_)
        preflight(cfg)
    except KdflowError as exc:
        fail(str(exc))
    console.print(f"config OK (hash {cfg.config_hash()[:12]})")


from flows.cache_cli import cache_app  # noqa: E402

app.add_typer(cache_app, name="cache")

from flows.ops_cli import register_ops_commands  # noqa: E402  (deploy, serve, sweep, retrain)

register_ops_commands(app)

from flows.server_cli import server_app, ui  # noqa: E402  (server start|stop|status, ui)
from flows.reproduce import reproduce  # noqa: E402

app.add_typer(server_app, name="server")
app.command("ui")(ui)
app.command("reproduce")(reproduce)


def main() -> None:
    # a CUDA build of torch on a machine without CUDA warns "No CUDA runtime is found" when model
    # export loads its C++ extension helpers: noise on every CPU run
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
