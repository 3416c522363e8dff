"""Start-up time of the `kdflow` command line, against what it cost when it loaded everything at once.

Each command runs as a fresh process (as a user, a test or a Prefect worker starts it), alternated
over rounds; the table gives the median wall time. ``kdflow --help`` and ``kdflow server status``
load neither torch, MLflow, Prefect nor torchmetrics, ``kdflow cache ls`` torch only. The row "eager
imports" is the CLI module plus the two modules it loaded at import time until 2026-12-03
(kdcore.evaluate.metrics, which brings torchmetrics, torchvision's models and scipy, and
tasks.tracking, which brings MLflow): what `kdflow --help` cost then, measured side by side.

    .venv/bin/python bench/cli_startup.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KDFLOW = str(Path(sys.executable).with_name("kdflow"))
COMMANDS = {
    "kdflow --help": [KDFLOW, "--help"],
    "kdflow server status": [KDFLOW, "server", "status"],
    "kdflow cache ls": [KDFLOW, "cache", "ls"],
    "eager imports (before)": [
        sys.executable,
        "-c",
        "import flows.cli, kdcore.evaluate.metrics, tasks.tracking",
    ],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="runs of each command (the first round warms the disk cache)")
    args = p.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory(prefix="kdflow-cli-startup-") as home:
        env = {**os.environ, "KDFLOW_HOME": home}
        for r in range(args.rounds + 1):
            for name, cmd in COMMANDS.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, check=True)
                if r > 0:  # round 0 only warms the page cache
                    seconds[name].append(time.perf_counter() - t0)
    base = statistics.median(seconds["eager imports (before)"])
    print(f"| command | median s ({args.rounds} runs) | range s | x eager imports |\n|---|---|---|---|")
    for name, runs in seconds.items():
        med = statistics.median(runs)
        print(f"| {name} | {med:.2f} | {min(runs):.2f}-{max(runs):.2f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
