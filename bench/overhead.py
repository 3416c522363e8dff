"""Orchestration overhead of the default pipeline: wall time against the stages' compute time.

Runs `configs/default.yaml` once in a fresh KDFLOW_HOME (Prefect's temporary server started by
the run itself, MLflow in SQLite) and prints, from the same run:
  wall        time of the whole `run_pipeline` call (includes Prefect start-up)
  compute     the kdcore functions' own time, per stage and summed
  critical    compute on the critical path (the baseline runs beside the distillation branch)
  overhead    wall - critical, in seconds and as a fraction of wall

Usage: .venv/bin/python bench/overhead.py [CONFIG] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-") as tmp:
        os.environ["KDFLOW_HOME"] = tmp
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        t0 = time.perf_counter()
        from flows.runner import run_pipeline  # imports count: a user pays them too

        report = run_pipeline(args.config, args.overrides, home=Path(tmp))
        wall = time.perf_counter() - t0
    st = report["stages"]
    compute = {s: st[s]["compute_seconds"] for s in st}
    branch = sum(compute[s] for s in ("teacher", "features", "pretrain", "distill"))
    critical = max(branch, compute.get("baseline", 0.0)) + compute["evaluate"] + compute["register"]
    print(f"{'stage':<10} {'compute s':>10} {'task s':>8}")
    for s in st:
        print(f"{s:<10} {compute[s]:>10.2f} {st[s]['task_seconds']:>8.2f}")
    print(f"wall time            {wall:8.2f} s")
    print(f"compute (sum)        {sum(compute.values()):8.2f} s")
    print(f"compute (critical)   {critical:8.2f} s")
    print(
        f"overhead             {wall - critical:8.2f} s  ({(wall - critical) / wall:.1%} of wall, "
        f"ratio wall/critical = {wall / critical:.2f})"
    )
    m = report["models"]
    print(
        f"test top-1: teacher {m['teacher']['top1']:.4f}  baseline {m['baseline']['top1']:.4f}  "
        f"student {m['student']['top1']:.4f}"
    )


if __name__ == "__main__":
    main()
