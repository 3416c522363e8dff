"""The local Prefect server kdflow keeps up between runs, and `kdflow ui`.

Every server here runs on a free port (never Prefect's 4200, which a developer's own server may
hold) and is stopped by the test that started it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import TINY
from flows.prefect_server import port_free as port_is_free  # as a server binds: SO_REUSEADDR
from migrated_prefect_db import seed as seed_prefect_db
from servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API") and k != "MLFLOW_TRACKING_URI"}
    env.update(KDFLOW_HOME=str(home), PYTHONPATH=str(ROOT), KDFLOW_PREFECT="local", COLUMNS="120", **extra)
    return env


def kdflow(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _pidfile(home: Path) -> dict:
    return json.loads((home / "prefect-server" / "server.json").read_text())


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two `kdflow run`s in one home, no PREFECT_API_URL: the first starts the server, the second reuses it."""
    tmp = tmp_path_factory.mktemp("local-server")
    home, port = tmp / "home", free_port()
    env = _env(home, KDFLOW_PREFECT_PORT=str(port), KDFLOW_PREFECT_IDLE_MINUTES="0")
    cfg = tmp / "tiny.yaml"
    short = {  # what is under test is the server, not the training: one epoch each, no latency timing
        **TINY,
        "teacher": {**TINY["teacher"], "train": {**TINY["teacher"]["train"], "max_epochs": 1}},
        "distill": {"train": {**TINY["distill"]["train"], "max_epochs": 1}},
        "evaluate": {**TINY["evaluate"], "latency": False},
    }
    cfg.write_text(yaml.safe_dump(short))
    out = {"home": home, "port": port, "env": env, "tmp": tmp, "runs": [], "pids": []}
    try:
        for i in range(2):
            run = kdflow(["run", str(cfg), "--quiet", "--report", str(tmp / f"report{i}.json")], env, tmp)
            assert run.returncode == 0, run.stderr[-3000:]
            out["runs"].append((run, json.loads((tmp / f"report{i}.json").read_text())))
            out["pids"].append(_pidfile(home)["pid"])
        yield out
    finally:
        pid = home / "prefect-server" / "server.json"
        if pid.exists():
            _kill_group(json.loads(pid.read_text())["pid"])


def test_second_run_reuses_the_server_and_its_flow_runs_are_in_the_api(two_runs):
    (first, r1), (second, r2) = two_runs["runs"]
    assert "starting a local Prefect server" in first.stderr
    assert "starting a local Prefect server" not in second.stderr
    assert two_runs["pids"][0] == two_runs["pids"][1]
    assert all(s["cached"] for s in r2["stages"].values())
    api = f"http://127.0.0.1:{two_runs['port']}/api"
    for report in (r1, r2):
        status, body = _get(f"{api}/flow_runs/{report['prefect_flow_run_id']}")
        run = json.loads(body)
        assert status == 200 and run["state"]["type"] == "COMPLETED", run["state"]
    req = urllib.request.Request(f"{api}/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"})
    names = {r["id"] for r in json.loads(urllib.request.urlopen(req, timeout=10).read())}
    assert {r1["prefect_flow_run_id"], r2["prefect_flow_run_id"]} <= names
    status = kdflow(["server", "status"], two_runs["env"], two_runs["tmp"], timeout=120)
    assert status.returncode == 0 and "running" in status.stdout and str(two_runs["port"]) in status.stdout


def test_a_server_of_another_prefect_version_fails_clearly(two_runs, monkeypatch):
    from flows import prefect_server as ps
    from kdcore.errors import KdflowError

    monkeypatch.setattr(ps, "client_version", lambda: "2.0.0")
    with pytest.raises(KdflowError) as exc:
        ps.start(two_runs["home"])
    message = str(exc.value)
    assert "runs Prefect" in message and "uses Prefect 2.0.0" in message and "kdflow server stop" in message
    assert _pidfile(two_runs["home"])["pid"] == two_runs["pids"][0]  # the running server is left alone


def _group_commands(pgid: int) -> list[str]:
    """The command lines of the processes in process group ``pgid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == pgid:
                out.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (ProcessLookupError, PermissionError, FileNotFoundError):
            pass
    return out


def test_ui_serves_both_uis_and_stop_frees_the_ports(two_runs):
    env, tmp, home = two_runs["env"], two_runs["tmp"], two_runs["home"]
    ui = kdflow(["ui"], env, tmp, timeout=300)
    assert ui.returncode == 0, ui.stderr[-3000:]
    urls = {line.split(":", 1)[0]: line.split()[2] for line in ui.stdout.splitlines() if " UI:" in line}
    assert urls["Prefect UI"] == f"http://127.0.0.1:{two_runs['port']}"
    mlflow_port = json.loads((home / "mlflow-ui" / "ui.json").read_text())["port"]
    assert urls["MLflow UI"] == f"http://127.0.0.1:{mlflow_port}"
    for url in urls.values():
        assert _get(url)[0] == 200
    # the MLflow UI reads this home's store: the runs' experiment is there
    req = urllib.request.Request(
        f"{urls['MLflow UI']}/api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 10}).encode(),
        headers={"Content-Type": "application/json"},
    )
    names = [e["name"] for e in json.loads(urllib.request.urlopen(req, timeout=10).read())["experiments"]]
    assert "tiny" in names
    # the UI idles without MLflow's job runner (its polling consumers took ~45 % of a core)
    commands = _group_commands(json.loads((home / "mlflow-ui" / "ui.json").read_text())["pid"])
    assert any("mlflow" in c for c in commands), commands
    assert not any("huey" in c or "_job_runner" in c for c in commands), commands
    again = kdflow(["ui"], env, tmp, timeout=300)  # found, not started twice
    assert again.returncode == 0 and json.loads((home / "mlflow-ui" / "ui.json").read_text())["port"] == mlflow_port
    stop = kdflow(["ui", "--stop"], env, tmp, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert "Prefect server stopped" in stop.stdout and "MLflow UI stopped" in stop.stdout
    assert port_is_free(two_runs["port"]) and port_is_free(mlflow_port)
    assert not (home / "prefect-server" / "server.json").exists()


def test_stale_pid_file_is_replaced_and_an_idle_server_stops_itself(tmp_path):
    home, port = tmp_path / "home", free_port()
    d = home / "prefect-server"
    d.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (d / "server.json").write_text(json.dumps({"pid": gone.pid, "port": port, "version": "x"}))
    # what is under test is the pid file and the idle stop, not a new database's migrations (the two
    # runs above start on a new one): the server starts on a migrated copy (tests/migrated_prefect_db.py)
    seed_prefect_db(d / "prefect-home" / "prefect.db")
    env = _env(home)
    status = kdflow(["server", "status"], env, tmp_path, timeout=120)
    assert "stale pid file" in status.stdout
    start = kdflow(["server", "start", "--port", str(port), "--idle-minutes", "0.25"], env, tmp_path, timeout=300)
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        assert f"removed a stale pid file of the local Prefect server (process {gone.pid} is gone)" in start.stderr
        pid = _pidfile(home)["pid"]
        assert pid != gone.pid and _get(f"http://127.0.0.1:{port}/api/health")[0] == 200
        deadline = time.time() + 120  # idle for 15 s, polled every 3.75 s
        while time.time() < deadline and (d / "server.json").exists():
            time.sleep(1)
        assert not (d / "server.json").exists(), (d / "server.log").read_text()[-2000:]
        while time.time() < deadline and not port_is_free(port):
            time.sleep(0.5)
        assert port_is_free(port)
        assert "no flow run and no kdflow client for 0.25 min" in (d / "server.log").read_text()
    finally:
        if (d / "server.json").exists():
            _kill_group(_pidfile(home)["pid"])


def test_busy_port_fails_clearly_and_the_default_moves_to_the_next(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        out = kdflow(["server", "start", "--port", str(busy)], _env(tmp_path / "home"), tmp_path, timeout=120)
        assert out.returncode == 2
        assert f"port {busy} on 127.0.0.1 is in use by another program" in out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "home" / "prefect-server" / "server.json").exists()

        from flows import prefect_server as ps

        said: list[str] = []
        monkeypatch.setattr(ps, "DEFAULT_PORT", busy)
        monkeypatch.delenv(ps.PORT_ENV, raising=False)
        chosen = ps._choose_port(None, said.append)
        assert chosen != busy and busy < chosen < busy + ps.PORT_TRIES
        assert said == [f"port {busy} is in use by another program; the Prefect server uses port {chosen}"]


def test_prefect_api_url_and_ephemeral_are_respected(monkeypatch):
    from flows import prefect_server as ps

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        assert ps.mode() == "external"
    monkeypatch.delenv("PREFECT_API_URL")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        monkeypatch.setenv("KDFLOW_PREFECT", "ephemeral")
        assert ps.mode() == "ephemeral"
        monkeypatch.setenv("KDFLOW_PREFECT", "local")
        assert ps.mode() == "local" and ps.mode(ephemeral=True) == "ephemeral"


def test_ports_are_checked_and_another_homes_server_on_the_port_is_not_taken_for_ours(tmp_path, monkeypatch):
    """A server kdflow starts counts as up only when the program answering on its port is that server:
    another home's, which took the port between the choice and the bind, is not (the flow run would
    land in the other home's database). Ports out of range or not numbers fail with one message."""
    import http.server
    import threading

    from flows import prefect_server as ps
    from kdcore.errors import KdflowError

    for port, env, needle in ((99999, None, "--port = 99999"), (None, "abc", "KDFLOW_PREFECT_PORT = 'abc'")):
        if env is None:
            monkeypatch.delenv(ps.PORT_ENV, raising=False)
        else:
            monkeypatch.setenv(ps.PORT_ENV, env)
        with pytest.raises(KdflowError, match=needle + r" is not a port number \(1-65535\)"):
            ps._choose_port(port, print)
    monkeypatch.delenv(ps.PORT_ENV, raising=False)
    with pytest.raises(KdflowError, match="idle time must be 0 .never stop. or more minutes, got -3"):
        ps.start(tmp_path / "home", idle=-3)

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    other = http.server.HTTPServer(("127.0.0.1", 0), Health)  # "another home's server" on the port
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        port = other.server_address[1]
        assert ps.healthy(f"http://127.0.0.1:{port}/api")
        ours = subprocess.Popen(["sleep", "3"], start_new_session=True)  # started, never binds the port
        srv = ps.LocalServer(ours.pid, port, ps.client_version(), tmp_path)
        assert not ps._listener_is(ours.pid, port)
        with pytest.raises(ps._ExitedWhileStarting, match="exited while starting"):
            ps._wait_healthy(srv, 20, ours)
    finally:
        other.shutdown()


def test_a_slow_server_is_waited_for_and_a_refused_port_is_not():
    """`kdflow deploy` asks the server's /health with patience: a server busy enough to answer after
    the 2-s read timeout (this happened beside three test workers on two cores) is still up, while a
    port nothing listens on is down at once."""
    import http.server
    import threading

    from flows import prefect_server as ps

    calls: list[float] = []

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's name
            calls.append(time.monotonic())
            if len(calls) == 1:
                time.sleep(3)  # past _get's 2-s timeout: the first answer comes too late
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args):
            pass

    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    try:
        api = f"http://127.0.0.1:{slow.server_address[1]}/api"
        assert not ps.healthy(api), "without patience a late answer is no answer"
        assert ps.healthy(api, patience=30) and len(calls) >= 2
    finally:
        slow.shutdown()
    refused = f"http://127.0.0.1:{free_port()}/api"
    started = time.monotonic()
    assert not ps.healthy(refused, patience=30)
    assert time.monotonic() - started < 5, "a refused connection is not retried for the whole patience"
