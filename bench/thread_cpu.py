"""Which threads use the CPU while a stage trains inside `kdflow run`?

Issue 12 listed the orchestrator's and the tracker's background threads among the suspects for the
pipeline's training loops running slower than a bare loop. This script runs the pipeline in this
process (as `kdflow run --ephemeral` does: Prefect's temporary server, MLflow in a SQLite store in a
fresh home), samples every thread's CPU time from ``/proc/self/task`` a few times a second, and for
each training stage (teacher, baseline, distill; its window is the stage's MLflow run) prints the
CPU seconds of every thread that used any: Python threads by name (the stage runs in Prefect's
``ThreadPoolExecutor`` worker; ``GlobalEventLoopThread``, ``EventsWorkerThread`` are Prefect's),
other threads as ``native`` (OpenMP workers, the allocator's). The sampler's own thread is left out.

Usage: .venv/bin/python bench/thread_cpu.py [--config configs/full_fashion.yaml] [--limit-train 8000]
       [--epochs 2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TICK = os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Every thread's CPU seconds (user + system), sampled with wall-clock times; names remembered.
    A thread that ends keeps the CPU time of its last sample (up to one interval short)."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="kdflow-bench-sampler", daemon=True)
        self.interval, self.samples, self.names = interval, [], {}
        self.stopped = threading.Event()

    @staticmethod
    def cpu() -> dict[int, float]:
        out = {}
        for task in Path("/proc/self/task").iterdir():
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended between listing and reading
                continue
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
        return out

    def run(self) -> None:
        latest: dict[int, float] = {}  # a thread that ended keeps the last CPU time seen of it
        while not self.stopped.is_set():
            self.names.update({t.native_id: t.name for t in threading.enumerate() if t.native_id})
            latest.update(self.cpu())
            self.samples.append((time.time(), dict(latest)))
            self.stopped.wait(self.interval)

    def window(self, t0: float, t1: float) -> dict[int, float]:
        """CPU seconds per thread between the samples nearest ``t0`` and ``t1``."""
        a = min(self.samples, key=lambda s: abs(s[0] - t0))[1]
        b = min(self.samples, key=lambda s: abs(s[0] - t1))[1]
        return {tid: v - a.get(tid, 0.0) for tid, v in b.items() if v - a.get(tid, 0.0) > 0}


def stage_windows(home: Path) -> dict[str, tuple[float, float]]:
    """Each finished training stage's MLflow run, start to end, in seconds since the epoch."""
    from mlflow import MlflowClient

    from bench.bare_loop import stage_runs

    runs = stage_runs(MlflowClient(f"sqlite:///{home / 'mlflow.db'}"))
    return {s: (r.info.start_time / 1000, r.info.end_time / 1000) for s, r in runs.items() if r.info.end_time}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "full_fashion.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--limit-train", type=int, default=8000, help="training images (0: all)")
    ap.add_argument("--epochs", type=int, default=2, help="teacher and distill epochs (0: the config's)")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    args = ap.parse_args()
    overrides = list(args.overrides)
    if args.limit_train:
        overrides.append(f"data.limit_train={args.limit_train}")
    if args.epochs:
        overrides += [f"teacher.train.max_epochs={args.epochs}", f"distill.train.max_epochs={args.epochs}"]
    home = Path(tempfile.mkdtemp(prefix="kdflow-thread-cpu-"))
    os.environ.update(KDFLOW_HOME=str(home), KDFLOW_PREFECT="ephemeral")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from flows.runner import run_pipeline

    sampler = Sampler(args.interval)
    sampler.start()
    run_pipeline(args.config, overrides, home)
    sampler.stopped.set()
    sampler.join()
    mine = sampler.native_id
    print(f"{args.config} with {' '.join(overrides)}; home {home}")
    print(f"{'stage':<9}{'wall s':>8}  CPU seconds per thread in the stage's window (MLflow run start to end)")
    for stage, (t0, t1) in sorted(stage_windows(home).items(), key=lambda kv: kv[1][0]):
        used = sorted(((v, tid) for tid, v in sampler.window(t0, t1).items() if tid != mine), reverse=True)
        total = sum(v for v, _ in used)
        parts = [f"{sampler.names.get(tid, 'native')} {v:.2f}" for v, tid in used if v >= 0.01]
        print(f"{stage:<9}{t1 - t0:>8.1f}  total {total:.2f}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
