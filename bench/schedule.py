"""Side by side or one after the other: the default pipeline with its stages run concurrently
(`trainer.concurrent_stages=true`: the baseline trains beside the teacher/distillation branch) and
sequentially (`false`: one stage at a time, in the declared order), to pick `auto`'s choice by
measurement.

Each run is a fresh process in a fresh KDFLOW_HOME (so every stage trains and MLflow creates its
store in both), all on one local Prefect server started first (its start-up is not timed). The
modes alternate, ROUNDS times. For each run it prints:
  wall       the `run_pipeline` call, in the run's process
  stage      per stage: compute (the kdcore functions' own time) / the stage as the flow saw it
             (submission to result: with concurrent stages this includes the slowdown of sharing
             the cores)
and, per mode, the mean wall time. The machine's other load is not controlled: run it on a quiet
machine for figures to quote.

Usage: .venv/bin/python bench/schedule.py [CONFIG] [--rounds 2] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

MODES = {"concurrent": "true", "sequential": "false"}


def one_run(config: str, overrides: list[str], out: Path) -> None:
    """In a child process: run the pipeline once and write the wall time and the report to ``out``."""
    from flows.runner import run_pipeline

    t0 = time.perf_counter()
    report = run_pipeline(config, overrides)
    wall = time.perf_counter() - t0
    out.write_text(json.dumps({"wall": wall, "report": report}, default=str))


def timed_child(config: str, overrides: list[str], home: Path, api_url: str) -> dict:
    out = home / "bench-result.json"
    env = {**os.environ, "KDFLOW_HOME": str(home), "PREFECT_API_URL": api_url, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, __file__, "--child", str(out), config]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    result["process_wall"] = time.perf_counter() - t0
    return result


def show(mode: str, rnd: int, result: dict) -> None:
    st = result["report"]["stages"]
    print(
        f"\n== {mode} (round {rnd + 1}; schedule reported: {result['report'].get('schedule', '?')}): "
        f"wall {result['wall']:.2f} s (process {result['process_wall']:.2f} s)"
    )
    print(f"{'stage':<10} {'compute s':>10} {'stage s':>8}")
    for s, i in st.items():
        print(f"{s:<10} {i['compute_seconds']:>10.2f} {i['seconds']:>8.2f}")
    print(f"compute (sum)  {sum(i['compute_seconds'] for i in st.values()):.2f} s")
    m = result["report"]["models"]
    print("test top-1: " + "  ".join(f"{k} {v['top1']:.4f}" for k, v in m.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        one_run(args.config, args.overrides, args.child)
        return

    from flows import prefect_server

    with tempfile.TemporaryDirectory(prefix="kdflow-schedule-") as tmp:
        server_home = Path(tmp) / "server"
        server, _ = prefect_server.start(home=server_home)
        walls: dict[str, list[float]] = {m: [] for m in MODES}
        try:
            for rnd in range(args.rounds):
                order = list(MODES) if rnd % 2 == 0 else list(reversed(MODES))  # alternate who goes first
                for mode in order:
                    home = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=tmp))
                    overrides = [*args.overrides, f"trainer.concurrent_stages={MODES[mode]}"]
                    result = timed_child(args.config, overrides, home, server.api_url)
                    walls[mode].append(result["wall"])
                    show(mode, rnd, result)
        finally:
            prefect_server.stop(server_home)
    print("\n== wall time per mode (s)")
    for mode, ws in walls.items():
        print(f"{mode:<11} mean {statistics.mean(ws):7.2f}   runs " + ", ".join(f"{w:.2f}" for w in ws))
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
