"""Where the test suite's CPU goes, by process: every process on the machine is sampled once a second
while a command runs (by default the README's test command), and each process's last reading of
its own CPU time (user + system) is kept. It prints the CPU by kind of process (pytest workers,
`kdflow run` subprocesses, Prefect and MLflow servers, DataLoader workers, ...) with the number of
processes, and the forkservers' children by the test that started the server.

Unlike bench/suite_cpu.py (getrusage around each test, children counted when reaped), this sees
processes that are killed or never reaped by the test that started them; what it misses is the
CPU of a process's last second and of processes that live less than a second.

Usage:
  python bench/suite_processes.py [--json FILE] [-- COMMAND ...]
  python bench/suite_processes.py --from-json FILE
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [sys.executable, "-m", "pytest", "-q", "-n", "3", "--dist", "loadfile"]

FORKSERVER_CHILD = "DataLoader worker / DDP rank (forkserver child)"  # known by its parent, not its command
KINDS = [  # (kind, pattern in the command line), the first that matches
    ("forkserver", r"multiprocessing\.forkserver import main"),
    ("multiprocessing spawn child", r"multiprocessing\.(spawn|resource_tracker)"),
    ("pytest-xdist worker", r"-c import sys;exec\(eval"),
    ("Prefect test-harness server", r"uvicorn .*--factory"),
    ("Prefect server", r"prefect.* server start"),
    ("Prefect worker", r"prefect.* worker start"),
    ("Prefect flow run", r"prefect[./](engine|runner\._workspace_supervisor)"),
    ("prefect deploy", r"prefect.* deploy"),
    ("MLflow server", r"mlflow.* server|mlflow/server"),
    ("Ray", r"\bray\b|raylet|gcs_server"),
    ("Dask", r"dask|distributed"),
]


def kind(cmd: str, parent_cmd: str) -> str:
    if re.search(r"multiprocessing\.forkserver import main", parent_cmd):
        return FORKSERVER_CHILD
    for name, pattern in KINDS:
        if re.search(pattern, cmd):
            return name
    m = re.search(r"(?:flows/cli\.py|flows\.cli|bin/kdflow)\s+(\S+)", cmd)
    if m:
        return f"kdflow {m.group(1)}"
    m = re.search(r"bench/(\S+\.py)", cmd)
    if m:
        return f"bench/{m.group(1)}"
    return "other: " + " ".join(cmd.split())[:60]


def sample(stop: threading.Event, seen: dict) -> None:
    me = os.getpid()
    while not stop.is_set():
        for p in psutil.process_iter(["pid", "ppid", "cmdline", "create_time", "cpu_times", "environ"]):
            info = p.info
            if info["pid"] == me or info["cpu_times"] is None:
                continue
            key = (info["pid"], info["create_time"])
            if key not in seen:
                env = info.get("environ") or {}
                seen[key] = {
                    "pid": info["pid"],
                    "ppid": info["ppid"],
                    "cmd": " ".join(info["cmdline"] or [])[:300],
                    "test": env.get("PYTEST_CURRENT_TEST", "")[:160],
                }
            seen[key]["cpu"] = info["cpu_times"].user + info["cpu_times"].system
        stop.wait(1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write every process's record here")
    ap.add_argument("--from-json", type=Path, help="print the table of a run saved with --json (runs nothing)")
    ap.add_argument("command", nargs="*", help="the command to run (after --); default: the README's test command")
    args = ap.parse_args()
    if args.from_json:  # the table again, from a run's saved records
        table(json.loads(args.from_json.read_text()))
        return
    cmd = args.command or DEFAULT
    before = {(p.pid, p.create_time()) for p in psutil.process_iter()}
    seen: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(stop, seen), daemon=True)
    sampler.start()
    t = time.perf_counter()
    rc = subprocess.call(cmd, cwd=ROOT)
    wall = time.perf_counter() - t
    stop.set()
    sampler.join()
    rows = [r for key, r in seen.items() if key not in before]
    total = sum(r["cpu"] for r in rows)
    print(f"`{shlex.join(cmd)}`: exit {rc}, {wall:,.0f} s of wall, {total:,.0f} s of CPU in {len(rows)} processes")
    table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows))
    sys.exit(rc)


def table(rows: list[dict]) -> None:
    by_pid = {r["pid"]: r for r in rows}
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    servers: collections.Counter = collections.Counter()
    for r in rows:
        parent = by_pid.get(r["ppid"], {})
        k = kind(r["cmd"], parent.get("cmd", ""))
        totals[k] += r["cpu"]
        counts[k] += 1
        if k == FORKSERVER_CHILD:
            servers[parent.get("test", "") or "?"] += r["cpu"]
    total = sum(totals.values())
    print("| process kind | processes | CPU s | share |")
    print("|---|---|---|---|")
    for k, v in totals.most_common():
        print(f"| {k} | {counts[k]} | {v:,.1f} | {100 * v / total:.1f}% |")
    if servers:
        print("\nforkserver children by the test that started their server:")
        for test, v in servers.most_common():
            print(f"  {v:7.1f} s  {test}")


if __name__ == "__main__":
    main()
