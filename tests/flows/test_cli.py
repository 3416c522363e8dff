"""The command line: every command has complete help; `validate` checks without running.

Bad configs through `kdflow run` are the catalogue in tests/test_bad_inputs.py (in-process, plus
one run of the real console command)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from flows.cli import app


def test_help_lists_every_command_and_option():
    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "160"})
    assert out.exit_code == 0
    for cmd in ("run", "validate", "ui", "cache"):
        assert cmd in out.output
    run_help = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "160"}).output
    for opt in ("--set", "--report", "KEY=VALUE", "config", "--verbose"):
        assert opt in run_help
    cache_help = CliRunner().invoke(app, ["cache", "--help"], env={"COLUMNS": "160"}).output
    for cmd in ("ls", "verify", "gc"):
        assert cmd in cache_help
    gc_help = CliRunner().invoke(app, ["cache", "gc", "--help"], env={"COLUMNS": "160"}).output
    assert "--keep-days" in gc_help and "--max-size" in gc_help


def test_the_cli_loads_no_tracker_orchestrator_or_metrics_library_before_a_command_needs_one():
    """torch, MLflow, Prefect and torchmetrics (which brings torchvision's models and scipy) load
    inside the commands that use them, not when the CLI module is imported: `kdflow --help` starts
    in a twentieth of the time (bench/cli_startup.py). The modules of the commands that only manage the
    servers (`kdflow server`, `kdflow ui`) load none of them either. So do torch's benchmark timer
    and FLOP counter (triton, and a C++-extension builder that logs a warning where torch is a CUDA
    build without a CUDA runtime)."""
    later = (
        "torch",
        "numpy",
        "mlflow",
        "prefect",
        "torchmetrics",
        "scipy",
        "pandas",  # kdcore.evaluate's comparison table: loaded by the evaluate stage
        "sklearn",  # mlxtend's McNemar test: loaded when a verdict is due
        "triton",
        "torch.utils.benchmark",
        "torch.utils.cpp_extension",
    )
    probe = (
        "import sys, flows.cli, flows.cache_cli, flows.reproduce, flows.prefect_server, flows.mlflow_ui, tasks.uris\n"
        f"print(' '.join(m for m in {later!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", f"imported at CLI start-up: {done.stdout.strip()}"


def test_validate_accepts_the_default_config_and_rejects_a_bad_one(kdhome):
    ok = CliRunner().invoke(app, ["validate"])
    assert ok.exit_code == 0, ok.output
    assert "config OK" in ok.output
    bad = CliRunner().invoke(app, ["validate", "--set", "student.arch=nope"])
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.output
    assert not (kdhome / "mlflow.db").exists()
