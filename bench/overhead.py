"""Orchestration and tracking overhead of the default pipeline: wall time against the stages' compute.

Two runs of `configs/default.yaml` in one fresh KDFLOW_HOME, each printed on its own:
  first   the first-ever run: kdflow starts its local Prefect server, MLflow creates its SQLite store
  warm    the same config with `trainer.seed` + 1 (so every stage trains again), the Prefect server
          and the MLflow store already up: what a user pays run after run
For each run:
  wall        the whole `run_pipeline` call
  compute     the kdcore functions' own time, per stage and summed
  critical    compute on the critical path of the schedule the run used (trainer.concurrent_stages):
              one stage after the other (the CPU's default), the sum of the stages; side by side,
              the longer of the distillation branch and the baseline, then evaluate and register
  overhead    wall - critical, in seconds and as a fraction of wall (target for the warm run:
              <= 10 % and <= 15 s)
The local server is stopped at the end.

Usage: .venv/bin/python bench/overhead.py [CONFIG] [--set key=value ...] [--ephemeral]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _timed_run(config: str, overrides: list[str], home: Path) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    from flows.runner import run_pipeline  # imports count on the first run: a user pays them too

    report = run_pipeline(config, overrides, home=home)
    return time.perf_counter() - t0, report


def critical_path(stages: dict[str, dict[str, Any]], schedule: str) -> float:
    """Compute seconds on the critical path of the schedule the run used: one stage after the other,
    the sum of all; side by side, the longer of the distillation branch and the baseline, then the rest."""
    compute = {s: i["compute_seconds"] for s, i in stages.items()}
    if schedule == "sequential":
        return sum(compute.values())
    branch = sum(compute.get(s, 0.0) for s in ("teacher", "features", "pretrain", "distill"))
    rest = sum(v for s, v in compute.items() if s not in ("teacher", "features", "pretrain", "distill", "baseline"))
    return max(branch, compute.get("baseline", 0.0)) + rest


def _print(title: str, wall: float, report: dict[str, Any]) -> None:
    st = report["stages"]
    compute = {s: st[s]["compute_seconds"] for s in st}
    critical = critical_path(report["stages"], report.get("schedule", "concurrent"))
    print(f"\n== {title} [stages: {report.get('schedule', 'concurrent')}]")
    print(f"{'stage':<10} {'compute s':>10} {'task s':>8} {'cached':>7}")
    for s in st:
        print(f"{s:<10} {compute[s]:>10.2f} {st[s]['task_seconds']:>8.2f} {str(st[s]['cached']):>7}")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--ephemeral", action="store_true", help="Prefect's temporary server instead of the local one")
    args = ap.parse_args()
    os.environ["KDFLOW_PREFECT"] = "ephemeral" if args.ephemeral else "local"
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    with tempfile.TemporaryDirectory(prefix="kdflow-bench-") as tmp:
        home = Path(tmp)
        os.environ["KDFLOW_HOME"] = tmp
        try:
            wall, report = _timed_run(args.config, args.overrides, home)
            _print("first-ever run (Prefect server start and MLflow store creation included)", wall, report)
            from kdcore.config import load_config

            seed = load_config(args.config, args.overrides).trainer.seed + 1
            wall, report = _timed_run(args.config, [*args.overrides, f"trainer.seed={seed}"], home)
            _print(f"warm run (server and store up; trainer.seed={seed}, so every stage trains)", wall, report)
        finally:
            if not args.ephemeral:
                from flows import prefect_server

                prefect_server.stop(home)


if __name__ == "__main__":
    main()
