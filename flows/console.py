"""What every `kdflow` command shares: where output goes, how it stops on an error, its common options.

Results go to ``out`` (stdout); every error goes to ``err`` (stderr) through ``fail``, as one line
``error: ...`` and a non-zero exit, never a traceback. A command module defines its own
``app = typer.Typer()``, decorates its commands with ``@app.command()`` and ``flows/cli.py`` adds it
to the root app (``add_typer``: without a name its commands join the top level, with one they form a
group such as ``kdflow cache``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Annotated, Iterator, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from kdcore.errors import KdflowError

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (2: the user's input is wrong)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a KdflowError (a problem the user can fix) raised inside into ``fail``."""
    try:
        yield
    except KdflowError as exc:
        fail(str(exc))


def quiet_prefect(verbose: bool) -> None:
    """Prefect's analytics off and its logs at WARNING unless ``--verbose`` (every command that runs flows)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    if not verbose:  # its "Still processing items" while it sends the last events at exit: not the user's concern
        logging.getLogger("EventsWorker").setLevel(logging.ERROR)


# options several commands take, spelled once
Overrides = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", metavar="KEY=VALUE", help="override a config value, e.g. distill.temperature=4"),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="show Prefect's task logs")]
ReportPath = Annotated[Optional[Path], typer.Option("--report", help="also write the results as JSON here")]


def check_writable(path: Path, option: str) -> None:
    """Fail now, before any work, if ``path`` could not be written later (a directory, a folder one
    may not write in, a file in the way of a folder). Writes nothing: the probe is an unnamed
    temporary file in the nearest existing folder."""
    import tempfile

    if path.is_dir():
        fail(f"{option} {str(path)!r} is a directory; give a file path")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        fail(f"{option} {str(path)!r}: {str(parent)!r} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        fail(f"{option} {str(path)!r} is not writable: cannot create files in {str(parent)!r} ({exc.strerror})")
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"{option} {str(path)!r} is not writable (permission denied)")


def write_json(path: Path, value: object, option: str = "--report") -> None:
    """Write ``value`` as JSON to ``path`` (its folder created) and say so."""
    import json

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2, default=str))
    except OSError as exc:
        fail(f"{option} {str(path)!r} could not be written: {exc.strerror or exc}")
    out.print(f"report written to {path}")
