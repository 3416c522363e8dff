"""A local Prefect server that stays up between runs, so the flow-run graph is there to open.

Without ``PREFECT_API_URL``, the commands that run flows use a Prefect server that kdflow starts in
the background on first use (``prefect server start`` on 127.0.0.1, with its UI) and reuse after.
Its state (``prefect.db``), log and pid file live under ``KDFLOW_HOME/prefect-server``. The server
runs under a small watchdog process (``python -m flows.prefect_server``) that stops it after
``KDFLOW_PREFECT_IDLE_MINUTES`` (default 120; 0: never) without a flow run or a kdflow client.

``KDFLOW_PREFECT=ephemeral`` (``kdflow run --ephemeral``) keeps Prefect's own temporary server;
``PREFECT_API_URL`` always wins and is used as it is."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from kdcore.errors import KdflowError

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
PORT_TRIES = 20
MODE_ENV, PORT_ENV, IDLE_ENV = "KDFLOW_PREFECT", "KDFLOW_PREFECT_PORT", "KDFLOW_PREFECT_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 120.0
STARTUP_TIMEOUT = 240.0
WATCHDOG = "flows.prefect_server"
# How long the server keeps an idle HTTP connection open. Prefect's client keeps its idle connections
# for 25 s; with the server's default of 5 s the server closes them first, the client's next request
# on such a connection fails and Prefect retries it after a ~2 s back-off (seen as a 2.1 s stall before
# a training task of the default run started). Longer than 25 s, the client always closes first.
# Prefect's temporary server is uvicorn run from the command line, which reads the same setting from
# UVICORN_TIMEOUT_KEEP_ALIVE.
KEEPALIVE_SECONDS = 75

Echo = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class LocalServer:
    pid: int  # the watchdog's pid, also the process group of the server
    port: int
    version: str
    dir: Path

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def log(self) -> Path:
        return self.dir / "server.log"


def server_dir(home: Optional[Path] = None) -> Path:
    from tasks.home import kdflow_home

    return Path(home or kdflow_home()) / "prefect-server"


def _pidfile(d: Path) -> Path:
    return d / "server.json"


def read_pidfile(d: Path) -> Optional[LocalServer]:
    try:
        raw = json.loads(_pidfile(d).read_text())
        return LocalServer(int(raw["pid"]), int(raw["port"]), str(raw["version"]), d)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int, marker: str = WATCHDOG) -> bool:
    """Whether ``pid`` runs and (where /proc tells) is the process we started, not a reused pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not ours
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return marker.encode() in cmdline.read_bytes()
        except OSError:
            return False
    return True


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT leftovers are no use
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def _get(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def _post(url: str, body: dict[str, Any], timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def healthy(api_url: str, patience: float = 0.0) -> bool:
    """Whether the server answers ``/health``. With ``patience`` (seconds), a server that is there but
    slow (a timeout, an error status: busy or still starting) is asked again until that much time
    has passed; a refused connection (nothing listens) is an answer at once."""
    deadline = time.monotonic() + patience
    while True:
        try:
            _get(api_url + "/health")
            return True
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                return False
        except Exception:  # noqa: BLE001 - not (yet) answering: a timeout, a reset connection
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)


def client_version() -> str:
    import prefect

    return prefect.__version__


def server_version(api_url: str) -> str:
    return str(_get(api_url + "/admin/version"))


def idle_minutes() -> float:
    raw = os.environ.get(IDLE_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_IDLE_MINUTES
    except ValueError:
        raise KdflowError(f"{IDLE_ENV}={raw!r} is not a number of minutes") from None


def running_server(home: Optional[Path] = None) -> Optional[LocalServer]:
    """The home's server if its pid file names a live, answering server (starts nothing)."""
    try:
        d = server_dir(home)
    except KdflowError:
        return None
    s = read_pidfile(d)
    return s if s is not None and pid_alive(s.pid) and healthy(s.api_url) else None


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _asked_port(port: Optional[int]) -> Optional[int]:
    """The port asked for (``--port``, else ``KDFLOW_PREFECT_PORT``), checked; None: choose one."""
    given, where = (port, "--port") if port is not None else (os.environ.get(PORT_ENV) or None, PORT_ENV)
    if given is None:
        return None
    try:
        value = int(given)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise KdflowError(f"{where} = {given!r} is not a port number (1-65535)")
    return value


def _choose_port(port: Optional[int], echo: Echo) -> int:
    asked = _asked_port(port)
    if asked:
        if not port_free(asked):
            raise KdflowError(
                f"port {asked} on {HOST} is in use by another program; choose a free one with "
                f"`kdflow server start --port N` or {PORT_ENV}"
            )
        return asked
    for p in range(DEFAULT_PORT, DEFAULT_PORT + PORT_TRIES):
        if port_free(p):
            if p != DEFAULT_PORT:
                echo(f"port {DEFAULT_PORT} is in use by another program; the Prefect server uses port {p}")
            return p
    raise KdflowError(
        f"ports {DEFAULT_PORT}-{DEFAULT_PORT + PORT_TRIES - 1} on {HOST} are all in use; choose one "
        f"with `kdflow server start --port N` or {PORT_ENV}"
    )


def _log_tail(log: Path, n: int = 8) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()[-n:]
    except OSError:
        return ""
    return ("\n  " + "\n  ".join(lines)) if lines else ""


def _check_version(s: LocalServer) -> None:
    try:
        theirs = server_version(s.api_url)
    except Exception:  # noqa: BLE001 - an old server without the route
        theirs = s.version
    ours = client_version()
    if theirs != ours:
        raise KdflowError(
            f"the local Prefect server at {s.ui_url} (pid {s.pid}) runs Prefect {theirs} but this "
            f"kdflow uses Prefect {ours}; stop it with `kdflow server stop` (the next run starts one "
            "of the right version) or set KDFLOW_PREFECT=ephemeral"
        )


class _ExitedWhileStarting(KdflowError):
    pass


def _listener_is(pid: int, port: int) -> bool:
    """Whether the program listening on ``port`` runs in the process group of ``pid`` (the server
    kdflow started, not another home's that took the port first)."""
    import psutil

    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid is not None:
            try:
                return os.getpgid(c.pid) == pid
            except ProcessLookupError:
                return False
    return False


def _wait_healthy(s: LocalServer, timeout: float, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # a server kdflow just started must be the one answering: another may have taken the port first
        if healthy(s.api_url) and (proc is None or _listener_is(proc.pid, s.port)):
            return
        code = proc.poll() if proc is not None else (None if pid_alive(s.pid) else "?")
        if code is not None:
            how = f"killed by signal {-code}" if isinstance(code, int) and code < 0 else f"exit status {code}"
            raise _ExitedWhileStarting(
                f"the local Prefect server exited while starting ({how}); its log {s.log} "
                f"ends with:{_log_tail(s.log) or ' (nothing)'}"
            )
        time.sleep(0.5)
    raise KdflowError(
        f"the local Prefect server (pid {s.pid}) did not answer at {s.api_url} within {timeout:.0f} s; "
        f"see {s.log}, or stop it with `kdflow server stop`"
    )


def touch(d: Path) -> None:
    (d / "last-used").touch()


def start(
    home: Optional[Path] = None,
    port: Optional[int] = None,
    idle: Optional[float] = None,
    timeout: float = STARTUP_TIMEOUT,
    echo: Echo = _stderr,
) -> tuple[LocalServer, bool]:
    """The home's running server, or a new one started in the background; returns (server, started)."""
    d = server_dir(home)
    with _locked(d):
        s = read_pidfile(d)
        if s is not None:
            if pid_alive(s.pid):
                _wait_healthy(s, timeout)  # maybe another kdflow is starting it right now
                _check_version(s)
                touch(d)
                return s, False
            echo(f"removed a stale pid file of the local Prefect server (process {s.pid} is gone)")
            _pidfile(d).unlink(missing_ok=True)
        minutes = idle_minutes() if idle is None else idle
        if minutes < 0:
            raise KdflowError(f"the idle time must be 0 (never stop) or more minutes, got {minutes:g}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(d / "prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_API_KEEPALIVE_TIMEOUT=str(KEEPALIVE_SECONDS),
            PREFECT_SERVER_LOGGING_LEVEL=os.environ.get("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")])
            ),
        )
        for attempt in (1, 2):  # a second try when the first was killed, or lost its port, before it answered
            chosen = _choose_port(port, echo)
            echo(f"starting a local Prefect server on {HOST}:{chosen} (kept running; `kdflow server stop` stops it)")
            with open(d / "server.log", "ab") as log:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        WATCHDOG,
                        "--dir",
                        str(d),
                        "--port",
                        str(chosen),
                        "--idle-minutes",
                        str(minutes),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    cwd=str(d),
                )
            srv = LocalServer(proc.pid, chosen, client_version(), d)
            _pidfile(d).write_text(
                json.dumps(
                    {
                        "pid": srv.pid,
                        "port": srv.port,
                        "version": srv.version,
                        "idle_minutes": minutes,
                        "started": time.time(),
                    }
                )
            )
            try:
                _wait_healthy(srv, timeout, proc)
                break
            except KdflowError as exc:
                _stop_group(srv.pid)
                _pidfile(d).unlink(missing_ok=True)
                lost_port = not port_free(chosen) and _asked_port(port) is None  # another program took it
                killed = (proc.returncode or 0) < 0
                if attempt == 2 or not isinstance(exc, _ExitedWhileStarting) or not (killed or lost_port):
                    raise
                echo(f"{exc}; starting it again")
        touch(d)  # the idle time counts from here
        return srv, True


def _stop_group(pid: int, timeout: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when we are its parent
            time.sleep(0.2)


def stop(home: Optional[Path] = None, timeout: float = 20.0) -> Optional[LocalServer]:
    """Stop the home's server (and wait for its port to be free); returns what was stopped, if anything."""
    d = server_dir(home)
    if not d.exists():
        return None
    with _locked(d):
        s = read_pidfile(d)
        if s is None:
            return None
        if pid_alive(s.pid):
            _stop_group(s.pid, timeout)
            deadline = time.monotonic() + timeout
            while not port_free(s.port) and time.monotonic() < deadline:
                time.sleep(0.2)
        else:
            s = None
        _pidfile(d).unlink(missing_ok=True)
        return s


def status(home: Optional[Path] = None) -> dict[str, Any]:
    d = server_dir(home)
    s = read_pidfile(d)
    if s is None:
        return {"state": "stopped", "dir": str(d)}
    if not pid_alive(s.pid):
        return {"state": "stale", "pid": s.pid, "dir": str(d)}
    out: dict[str, Any] = {
        "state": "running" if healthy(s.api_url) else "starting",
        "pid": s.pid,
        "port": s.port,
        "ui": s.ui_url,
        "api": s.api_url,
        "log": str(s.log),
        "dir": str(d),
    }
    with contextlib.suppress(OSError, ValueError):
        out["idle_minutes"] = json.loads(_pidfile(d).read_text()).get("idle_minutes")
    if out["state"] == "running":
        with contextlib.suppress(Exception):
            out["version"] = server_version(s.api_url)
    return out


def mode(ephemeral: bool = False) -> str:
    """``external`` (a PREFECT_API_URL is set), ``ephemeral`` or ``local``."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # the environment, a profile, or a test harness
        return "external"
    choice = os.environ.get(MODE_ENV, "local").strip().lower() or "local"
    if choice not in ("local", "ephemeral"):
        raise KdflowError(f"{MODE_ENV}={choice!r}: expected 'local' or 'ephemeral'")
    return "ephemeral" if ephemeral or choice == "ephemeral" else "local"


@contextlib.contextmanager
def prefect_for_run(echo: Echo = _stderr) -> Iterator[Optional[LocalServer]]:
    """Inside, flows talk to the server this run should use (see the module's doc). The local server is
    the one of ``KDFLOW_HOME``, whichever home the run's artifacts go to (``kdflow reproduce`` runs in a
    fresh home on the user's server)."""
    if mode() != "local":
        os.environ.setdefault("UVICORN_TIMEOUT_KEEP_ALIVE", str(KEEPALIVE_SECONDS))  # a temporary server
        yield None
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    s, _ = start(echo=echo)
    with temporary_settings(updates={PREFECT_API_URL: s.api_url}):
        try:
            yield s
        finally:
            with contextlib.suppress(OSError):
                touch(s.dir)


# ---- the watchdog: runs the server and stops it when idle ------------------------------------------------------


def _busy_or_recent(api: str, since: dt.datetime) -> bool:
    active = _post(
        api + "/flow_runs/count", {"flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING", "CANCELLING"]}}}}
    )
    if active:
        return True
    recent = _post(api + "/flow_runs/filter", {"flow_runs": {"end_time": {"after_": since.isoformat()}}, "limit": 1})
    return bool(recent)


def watchdog(d: Path, port: int, minutes: float) -> int:
    api = f"http://{HOST}:{port}/api"
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)])

    def shutdown(*_: Any) -> None:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
        mine = read_pidfile(d)
        if mine is not None and mine.pid == os.getpid():
            _pidfile(d).unlink(missing_ok=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    idle_s = minutes * 60
    poll = max(1.0, min(30.0, idle_s / 4)) if idle_s > 0 else 30.0
    up_since: Optional[float] = None
    while True:
        time.sleep(poll)
        if server.poll() is not None:
            print(f"kdflow: the Prefect server exited with {server.returncode}", flush=True)
            mine = read_pidfile(d)
            if mine is not None and mine.pid == os.getpid():
                _pidfile(d).unlink(missing_ok=True)
            return server.returncode or 1
        if idle_s <= 0:
            continue
        if up_since is None:  # idle time counts once the server answers, not while it starts
            up_since = time.time() if healthy(api) else None
            continue
        try:
            last_used = (d / "last-used").stat().st_mtime
        except OSError:
            last_used = 0.0
        if time.time() - max(last_used, up_since) < idle_s:
            continue
        since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=idle_s)
        try:
            if _busy_or_recent(api, since):
                continue
        except Exception:  # noqa: BLE001 - not answering yet: not idle
            continue
        print(f"kdflow: no flow run and no kdflow client for {minutes:g} min: stopping the Prefect server", flush=True)
        shutdown()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=WATCHDOG, description="run a local Prefect server, stop it when idle")
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--idle-minutes", type=float, default=DEFAULT_IDLE_MINUTES)
    a = p.parse_args(argv)
    return watchdog(a.dir, a.port, a.idle_minutes)


if __name__ == "__main__":
    sys.exit(main())
