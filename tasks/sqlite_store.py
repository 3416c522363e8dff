"""New SQLite MLflow stores, made from an empty store migrated once per MLflow version and user.

MLflow builds a new SQLite store by running its whole chain of schema migrations: about 1.6 s of a
core, paid by every new kdflow home (each first run, each `kdflow reproduce` into a fresh home, each
test). A copy of an empty store that went through them once takes milliseconds. The template holds
no experiment: MLflow adds its "Default" one when it first opens the copy, with the copy's own
artifact root. Where the template cannot be made (an unwritable cache), MLflow migrates as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import mlflow

SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def cache_dir() -> Path:
    """kdflow's per-user cache: ``$XDG_CACHE_HOME/kdflow``, else ``~/.cache/kdflow``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdflow"


def template_path() -> Path:
    return cache_dir() / f"mlflow-{mlflow.__version__}-empty.db"


def _make_template(path: Path) -> None:
    """Migrate an empty database in a temporary file beside ``path``, then move it into place (two
    processes making it at once each write their own file; the last move wins, both complete)."""
    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine_with_retry

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".building-", suffix=".db")
    os.close(fd)
    try:
        engine = create_sqlalchemy_engine_with_retry(f"sqlite:///{tmp}")
        try:
            _initialize_tables(engine)
        finally:
            engine.dispose()
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _template() -> Optional[Path]:
    """The template, made now if it is missing or is not an SQLite file; None where it cannot be."""
    path = template_path()
    if not _is_sqlite(path):
        try:
            _make_template(path)
        except Exception:  # noqa: BLE001 - an optimisation only: MLflow then migrates the new store itself
            return None
    return path


def seed_new_store(db: Path) -> bool:
    """Put a copy of the migrated empty store at ``db`` unless a file is there already. Returns
    whether it did; the copy appears whole or not at all (another process may open ``db`` at once)."""
    template = _template()
    if template is None or db.exists():
        return False
    fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=".new-store-", suffix=".db")
    os.close(fd)
    try:
        shutil.copyfile(template, tmp)
        os.link(tmp, db)  # fails where another process put a store there meanwhile: that one stays
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: MLflow migrates the store itself
        return False
    finally:
        os.unlink(tmp)
