"""The tree passes the linters configured in pyproject.toml: ruff (lint and format) and mypy."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ruff_and_mypy_pass_on_the_tree():
    failures = []
    for tool, *args in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        cmd = [str(BIN / tool), *args]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            failures.append(f"$ {' '.join([tool, *args])} -> exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    assert not failures, "\n\n".join(failures)
