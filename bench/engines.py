"""Wall time of one 4-trial sweep (2 students x 2 temperatures, the tiny digits config of the tests)
on one process (threads, one trial at a time), a local Dask cluster (2 worker processes) and a
local Ray cluster (2 CPUs), each in a fresh KDFLOW_HOME; checks that the three give the same
results and prints the times.

    python bench/engines.py [--runners thread dask ray]

Expect no speed-up on a 2-core machine: the engines add cluster start-up and per-task
serialisation; they pay off with more cores or GPUs per machine, or several machines.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def sweep_config(runner: str, workers: int) -> dict:
    from conftest import TINY

    raw = copy.deepcopy(TINY)
    raw["distill"] = {"train": {"max_epochs": 1, "batch_size": 64}}
    raw["baseline"] = {"enabled": False}
    raw["evaluate"]["latency"] = False
    raw["trainer"] = {"num_threads": 1}
    raw["sweep"] = {
        "trials": [{"student.arch": "cnn_tiny"}, {"student.arch": "cnn", "student.kwargs": {"channels": [4, 8]}}],
        "grid": {"distill.temperature": [2.0, 4.0]},
        "task_runner": runner,
        "max_workers": workers,
        "profile": False,
    }
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", nargs="+", default=["thread", "dask", "ray"])
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    from flows.params import run_locally
    from flows.sweep import sweep_flow

    results = {}
    with prefect_test_harness(server_startup_timeout=300):
        for runner in args.runners:
            home = Path(tempfile.mkdtemp(prefix=f"kdflow-bench-{runner}-"))
            t0 = time.perf_counter()
            out = run_locally(
                sweep_flow, home, config=sweep_config(runner, 1 if runner == "thread" else 2), home=str(home)
            )
            results[runner] = (time.perf_counter() - t0, out["table"])
    base = results.get("thread")
    print(f"{'runner':8} {'wall s':>8} {'per trial s':>12} {'vs 1 process':>13}  top-1 per trial")
    for runner, (seconds, table) in results.items():
        tops = [round(r["top1"], 4) for r in table]
        ratio = f"{seconds / base[0]:.2f}x" if base else "-"
        print(f"{runner:8} {seconds:8.1f} {seconds / len(table):12.1f} {ratio:>13}  {tops}")
        if base:
            same = all(abs(a["top1"] - b["top1"]) < 1e-9 for a, b in zip(table, base[1]))
            print(f"{'':8} results equal to the one-process sweep: {same}")


if __name__ == "__main__":
    main()
