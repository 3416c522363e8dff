"""Where the test suite's CPU goes: runs the README's test command with this file as a pytest plugin
and prints the CPU of each module (the worker's own and that of the child processes it reaped during
the module's tests), the test wall time of each worker, and the whole run's CPU against its wall time.

    .venv/bin/python bench/suite_cpu.py                  # the whole suite (as long as `make test`)
    .venv/bin/python bench/suite_cpu.py tests/kdcore     # pytest arguments: a part of it

A child's CPU is counted when it is reaped, so a server that lives through several modules (the
session's real servers, a Ray cluster) is counted in the test that stops it."""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOG_ENV = "KDFLOW_SUITE_CPU_LOG"


def _cpu() -> tuple[float, float]:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):  # the plugin: one line per test
    log = os.environ.get(LOG_ENV)
    own0, kids0 = _cpu()
    start = time.monotonic()
    yield
    if log:
        own1, kids1 = _cpu()
        row = {
            "id": item.nodeid,
            "own": own1 - own0,
            "children": kids1 - kids0,
            "wall": time.monotonic() - start,
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        }
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def report(rows: list[dict], cpu: float, wall: float, top: int) -> None:
    modules: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    workers: dict[str, float] = collections.defaultdict(float)
    for r in rows:
        m = modules[r["id"].split("::")[0]]
        m[0] += r["own"]
        m[1] += r["children"]
        m[2] += r["wall"]
        workers[r["worker"]] += r["wall"]
    print(f"tests: {len(rows)}; run: {wall:.0f} s wall, {cpu:.0f} s CPU (all processes reaped)")
    print(f"busy cores on average: {cpu / wall:.2f}")
    print("test wall per worker: " + ", ".join(f"{w} {s:.0f} s" for w, s in sorted(workers.items())))
    total = sum(m[0] + m[1] for m in modules.values())
    print("\n| module | CPU s | own | children | share | test wall s |\n|---|---|---|---|---|---|")
    ranked = sorted(modules.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
    for name, (own, kids, w) in ranked[:top]:
        print(f"| {name} | {own + kids:.0f} | {own:.0f} | {kids:.0f} | {(own + kids) / total:.1%} | {w:.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top", type=int, default=20, help="modules to print")
    args, pytest_args = ap.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="kdflow-suite-cpu-") as tmp:
        log = Path(tmp) / "tests.jsonl"
        env = {**os.environ, LOG_ENV: str(log)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"), env.get("PYTHONPATH")]))
        cmd = [sys.executable, "-m", "pytest", "-q", "-n", "3", "--dist", "loadfile", "-p", "suite_cpu", *pytest_args]
        start = time.monotonic()
        done = subprocess.run(cmd, cwd=ROOT, env=env)
        wall = time.monotonic() - start
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    report(rows, kids.ru_utime + kids.ru_stime, wall, args.top)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
