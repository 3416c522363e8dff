"""`kdflow server start|stop|status` and `kdflow ui`: the local Prefect server and the MLflow UI."""

from __future__ import annotations

import os
from typing import Optional

import typer

from flows.console import err, user_errors
from flows.console import out as console

app = typer.Typer()
server_app = typer.Typer(
    help="The local Prefect server that kdflow keeps up between runs (its UI shows the flow-run graphs).",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")


def _home():
    from tasks.home import kdflow_home

    return kdflow_home()


@server_app.command("start")
def server_start(
    port: Optional[int] = typer.Option(None, "--port", help="port on 127.0.0.1 (default: 4200, or the next free one)"),
    idle_minutes: Optional[float] = typer.Option(
        None,
        "--idle-minutes",
        help="stop after this long without a flow run (default: KDFLOW_PREFECT_IDLE_MINUTES or 120; 0: never)",
    ),
) -> None:
    """Start the local Prefect server in the background (or find the running one)."""
    from flows import prefect_server as ps

    with user_errors():
        s, started = ps.start(_home(), port=port, idle=idle_minutes, echo=lambda m: err.print(m, highlight=False))
    console.print(
        f"Prefect server {'started' if started else 'already running'} (pid {s.pid}): UI {s.ui_url}, API {s.api_url}",
        highlight=False,
        soft_wrap=True,
    )


@server_app.command("stop")
def server_stop(all_: bool = typer.Option(False, "--all", help="also stop the MLflow UI of `kdflow ui`")) -> None:
    """Stop the local Prefect server (and with --all the MLflow UI)."""
    _stop_all(all_)


def _stop_all(with_mlflow: bool) -> None:
    from flows import mlflow_ui
    from flows import prefect_server as ps

    with user_errors():
        home = _home()
        s = ps.stop(home)
        ui = mlflow_ui.stop(home) if with_mlflow else None
    console.print(
        f"Prefect server stopped (pid {s.pid}, port {s.port} free)" if s else "no Prefect server was running",
        highlight=False,
    )
    if with_mlflow:
        console.print(
            f"MLflow UI stopped (pid {ui.pid}, port {ui.port} free)" if ui else "no MLflow UI was running",
            highlight=False,
        )


@server_app.command("status")
def server_status() -> None:
    """Whether the local Prefect server runs, where, and which version."""
    from flows import prefect_server as ps
    from tasks.uris import redact

    with user_errors():
        st = ps.status(_home())
    if os.environ.get("PREFECT_API_URL"):
        console.print(f"PREFECT_API_URL is set: runs go to {redact(os.environ['PREFECT_API_URL'])}", highlight=False)
    if st["state"] == "stopped":
        console.print(f"stopped (state under {st['dir']})", highlight=False)
    elif st["state"] == "stale":
        console.print(
            f"stopped; a stale pid file names process {st['pid']}, which is gone (the next start replaces it)",
            highlight=False,
        )
    else:
        idle = st.get("idle_minutes")
        version = st.get("version", "?")
        console.print(
            f"{st['state']} (pid {st['pid']}, Prefect {version}): UI {st['ui']}, API {st['api']}"
            + (f"; stops after {idle:g} min idle" if idle else "")
            + f"; log {st['log']}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def ui(
    open_: bool = typer.Option(False, "--open", help="also open both UIs in a browser"),
    stop_: bool = typer.Option(False, "--stop", help="stop the MLflow UI and the local Prefect server"),
) -> None:
    """Start (or find) the Prefect server and an MLflow UI on this home's store, and print both URLs."""
    if stop_:
        _stop_all(True)
        return
    from flows import mlflow_ui
    from flows import prefect_server as ps
    from tasks.uris import default_tracking_uri, redact

    with user_errors():
        home = _home()
        uri = default_tracking_uri(home)
        if ps.mode() == "external":
            prefect_url = redact(os.environ.get("PREFECT_API_URL", "").removesuffix("/").removesuffix("/api"))
        else:
            prefect_url = ps.start(home, echo=lambda m: err.print(m, highlight=False))[0].ui_url
        if uri.startswith(("http://", "https://")):
            mlflow_url = redact(uri)
        else:
            mlflow_url = mlflow_ui.start(home, uri)[0].url
    console.print(f"Prefect UI: {prefect_url}   (flow runs: {prefect_url}/runs)", highlight=False, soft_wrap=True)
    console.print(f"MLflow UI:  {mlflow_url}   (store {redact(uri)})", highlight=False, soft_wrap=True)
    console.print(f"artifacts and cache: {home}\nstop both with `kdflow ui --stop`", highlight=False, soft_wrap=True)
    if open_:
        import webbrowser

        for url in (prefect_url, mlflow_url):
            webbrowser.open(url)
