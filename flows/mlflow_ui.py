"""An MLflow UI on the run's local store (``mlflow server`` on 127.0.0.1, a free port), kept in the
background with a pid file under ``KDFLOW_HOME/mlflow-ui`` until ``kdflow ui --stop``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from flows.prefect_server import HOST, _locked, _log_tail, _stop_group, pid_alive, port_free
from kdcore.errors import KdflowError

FIRST_PORT = 5000
STARTUP_TIMEOUT = 180.0


@dataclass(frozen=True)
class MlflowUI:
    pid: int
    port: int
    store: str
    dir: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def ui_dir(home: Path) -> Path:
    return Path(home) / "mlflow-ui"


def _read(d: Path) -> Optional[MlflowUI]:
    try:
        raw = json.loads((d / "ui.json").read_text())
        return MlflowUI(int(raw["pid"]), int(raw["port"]), str(raw["store"]), d)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except Exception:  # noqa: BLE001
        return False


def running(home: Path) -> Optional[MlflowUI]:
    ui = _read(ui_dir(home))
    return ui if ui is not None and pid_alive(ui.pid, "mlflow") and _answers(ui.url) else None


def start(home: Path, store: str, timeout: float = STARTUP_TIMEOUT) -> tuple[MlflowUI, bool]:
    """The MLflow UI on ``store`` (a local database), started unless one already serves it."""
    d = ui_dir(home)
    with _locked(d):
        ui = _read(d)
        if ui is not None and pid_alive(ui.pid, "mlflow"):
            if ui.store == store and _answers(ui.url):
                return ui, False
            _stop_group(ui.pid)  # another store, or not answering: replace it
        (d / "ui.json").unlink(missing_ok=True)
        port = next((p for p in range(FIRST_PORT, FIRST_PORT + 100) if port_free(p)), None)
        if port is None:
            raise KdflowError(f"no free port in {FIRST_PORT}-{FIRST_PORT + 99} on {HOST} for the MLflow UI")
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        # MLflow's job runner serves its GenAI jobs, not this UI: left on, its seven polling processes
        # take about 45 % of a core for as long as the UI stays up (set the variable to true for them)
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        argv = [
            str(mlflow_bin) if mlflow_bin.exists() else "mlflow",
            "server",
            "--host",
            HOST,
            "--port",
            str(port),
            "--backend-store-uri",
            store,
            "--workers",
            "1",
        ]
        with open(d / "ui.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(d),
            )
        ui = MlflowUI(proc.pid, port, store, d)
        (d / "ui.json").write_text(json.dumps({"pid": ui.pid, "port": port, "store": store}))
        deadline = time.monotonic() + timeout
        while not _answers(ui.url):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop_group(ui.pid)
                (d / "ui.json").unlink(missing_ok=True)
                raise KdflowError(
                    f"the MLflow UI did not start; its log {d / 'ui.log'} ends with:{_log_tail(d / 'ui.log')}"
                )
            time.sleep(0.5)
        return ui, True


def stop(home: Path, timeout: float = 20.0) -> Optional[MlflowUI]:
    d = ui_dir(home)
    if not d.exists():
        return None
    with _locked(d):
        ui = _read(d)
        (d / "ui.json").unlink(missing_ok=True)
        if ui is None or not pid_alive(ui.pid, "mlflow"):
            return None
        _stop_group(ui.pid, timeout)
        deadline = time.monotonic() + timeout
        while not port_free(ui.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        return ui
