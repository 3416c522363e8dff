"""The tree passes ruff (lint and format) as configured in pyproject.toml. mypy, cold, takes minutes
of a core (it reads torch's, MLflow's and Prefect's annotations): `make lint` runs it, and `.ci/run`
runs `make lint` beside `make test`."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_passes_on_the_tree():
    failures = []
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([str(BIN / "ruff"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            failures.append(f"$ ruff {' '.join(args)} -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    assert not failures, "\n\n".join(failures)


def test_ci_runs_mypy():
    """mypy is not in the suite, so CI must run it itself."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make lint" in ci and "make test" in ci, ci
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "mypy" in lint, lint
