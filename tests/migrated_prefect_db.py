"""The tests' Prefect servers start on a copy of a database a server of this Prefect version made once.

A Prefect server on a new SQLite database first runs its whole chain of schema migrations and
registers its block types: on this machine kind, 29.9 s of the server's CPU until Prefect's test
harness answered against 16.5 s on a copy of a database that went through it (bench/prefect_start.py,
2026-12-05). Six of the suite's servers start this way (each xdist worker's test harness, the real
servers, the integration stack, test_local_server's stale-pid server), so the first of them makes
the template, once per Prefect version and user, in kdflow's cache folder (tasks/sqlite_store.py),
and every server starts on a copy of it.

The template is made by a server with its services off (no events, no scheduled runs), stopped once
healthy; it holds the schema and the block types only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import prefect

from servers import free_port, wait_http
from tasks.sqlite_store import cache_dir

SERVICES = (
    "CANCELLATION_CLEANUP",
    "EVENT_PERSISTER",
    "EVENT_LOGGER",
    "FOREMAN",
    "LATE_RUNS",
    "SCHEDULER",
    "PAUSE_EXPIRATIONS",
    "REPOSSESSOR",
    "CLEANUP_RECONCILER",
    "TASK_RUN_RECORDER",
    "TRIGGERS",
)


def template_path() -> Path:
    return cache_dir() / f"prefect-{prefect.__version__}-server.db"


def _build(path: Path) -> None:
    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=".building-prefect-"))
    try:
        db = work / "prefect.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(work / "home"),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{db}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            **{f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false" for name in SERVICES},
        )
        port = free_port()
        argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        with open(work / "server.log", "wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/api/health", timeout=300, proc=proc)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.closing(sqlite3.connect(db)) as con:  # everything in the one file, no -wal beside it
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        os.replace(db, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def template() -> Path:
    """The template, made now where it is missing (one process makes it; the others wait for it)."""
    path = template_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            _build(path)
    return path


def seed(db: Path) -> Path:
    """A copy of the template at ``db`` (which must not exist yet); returns ``db``."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template(), db)
    return db


def _seeded_temp_dir() -> str:
    folder = tempfile.mkdtemp()
    seed(Path(folder) / "prefect-test.db")  # the harness's name for its database in that folder
    return folder


@contextlib.contextmanager
def seeded_harness(startup_timeout: int = 120) -> Iterator[None]:
    """Prefect's ``prefect_test_harness`` with its database a copy of the template. The harness makes
    the database's folder with ``mkdtemp()``, which is patched while it starts and only then."""
    import pytest
    from prefect.testing import utilities
    from prefect.testing.utilities import prefect_test_harness

    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(utilities, "mkdtemp", _seeded_temp_dir)
            stack.enter_context(prefect_test_harness(server_startup_timeout=startup_timeout))
        yield
