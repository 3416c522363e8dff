"""Real Prefect and MLflow servers for tests: started as subprocesses on 127.0.0.1, stopped cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: str
    log: Path
    proc: subprocess.Popen | None = None
    port: int = 0
    extra: dict = field(default_factory=dict)

    def launch(self) -> "Server":
        """Start the process without waiting for it to answer (start several, then ``wait`` each)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait(self, timeout: float = 180.0) -> "Server":
        wait_http(self.health, timeout=timeout, proc=self.proc)
        return self

    def start(self, timeout: float = 180.0) -> "Server":
        return self.launch().wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        deadline = time.time() + timeout
        while not port_is_free(self.port) and time.time() < deadline:
            time.sleep(0.2)


def mlflow_server(root: Path, port: int | None = None) -> Server:
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    argv = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # MLflow's job runner (GenAI jobs, which kdflow does not use) keeps seven polling processes that
    # take about 45 % of a core while the server idles, for as long as the session holds the server
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return Server(
        "mlflow",
        argv,
        env,
        f"http://127.0.0.1:{port}/health",
        root / "mlflow.log",
        port=port,
        extra={"uri": f"http://127.0.0.1:{port}"},
    )


def prefect_server(root: Path, port: int | None = None) -> Server:
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "home" / "prefect.db").exists():  # PREFECT_HOME's database: a copy of the migrated one
        from migrated_prefect_db import seed

        seed(root / "home" / "prefect.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(root / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        PREFECT_UI_ENABLED="false",
        # scheduled runs made every 5 s, not every 60: test_workers' `kdflow serve` test waits for one
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
    )
    argv = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return Server(
        "prefect",
        argv,
        env,
        f"http://127.0.0.1:{port}/api/health",
        root / "prefect.log",
        port=port,
        extra={"api": f"http://127.0.0.1:{port}/api"},
    )


def client_env(prefect: Server, mlflow_uri: str, home: Path) -> dict[str, str]:
    """The environment of a kdflow process that talks to these servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        PREFECT_API_URL=prefect.extra["api"],
        MLFLOW_TRACKING_URI=mlflow_uri,
        KDFLOW_HOME=str(home),
        PREFECT_HOME=str(home / "prefect-client"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def which(name: str) -> str:
    return shutil.which(name, path=str(BIN)) or name


class PrefectApi:
    """The Prefect REST API over plain HTTP (no Prefect client settings involved).

    A server on SQLite answers 503 while its database is busy (two test workers each drive a
    server and its workers on two cores); such a call is repeated, anything else raises."""

    RETRIES = 5

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: dict | None = None):
        import httpx

        for attempt in range(self.RETRIES + 1):
            r = httpx.request(method, f"{self.url}{path}", json=body, timeout=30)
            if r.status_code != 503 or attempt == self.RETRIES:
                r.raise_for_status()
                return r.json()
            time.sleep(1 + attempt)

    def get(self, path: str):
        return self._call("GET", path)

    def post(self, path: str, body: dict):
        return self._call("POST", path, body)
