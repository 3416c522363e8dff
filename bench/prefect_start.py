"""What a Prefect test server's start costs on a new database (its migrations and block types) and
on a copy of the database a server made once (tests/migrated_prefect_db.py), side by side.

    .venv/bin/python bench/prefect_start.py [--repeats 2]

Each repeat starts Prefect's test harness (``prefect_test_harness``, as tests/conftest.py's
prefect_server fixture does) both ways and stops it; the template is made once, first, in a
temporary cache, and its cost printed apart. Printed: the server process's CPU seconds and the
wall seconds until the harness answered, medians."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="kdflow-prefect-start-")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")

    import psutil
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.testing.utilities import prefect_test_harness

    import migrated_prefect_db

    t = time.time()
    migrated_prefect_db.template()
    made = time.time() - t

    def start(copy: bool) -> tuple[float, float]:
        begin = time.time()
        harness = migrated_prefect_db.seeded_harness if copy else prefect_test_harness
        with harness(300):
            wall = time.time() - begin
            cpu = psutil.Process(SubprocessASGIServer._instances[None].server_process.pid).cpu_times()
            return cpu.user + cpu.system, wall

    fresh, copied = [], []
    for _ in range(args.repeats):
        fresh.append(start(copy=False))
        copied.append(start(copy=True))
    print(f"template made once: {made:.1f} s wall (a server started with its services off, then stopped)")
    for name, runs in (("new database", fresh), ("copy of the template", copied)):
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        print(f"{name:>22}: server {cpu:5.1f} s CPU, harness up after {wall:5.1f} s  ({args.repeats} starts)")
    ratio = statistics.median(r[0] for r in fresh) / statistics.median(r[0] for r in copied)
    print(f"CPU to a running test server, new database / copy: x{ratio:.2f}")


if __name__ == "__main__":
    main()
