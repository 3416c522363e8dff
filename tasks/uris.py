"""Tracking URIs as text: which store a home uses, and a URI fit to print. No MLflow here, so the
commands that only print or manage servers (`kdflow server status`, `kdflow ui`) start without it."""

from __future__ import annotations

import os
import re
from pathlib import Path

_CRED = re.compile(r"(//)([^/@:]+)(:[^/@]*)?@")


def redact(uri: str) -> str:
    """``http://user:secret@host`` -> ``http://***@host``."""
    return _CRED.sub(r"\1***@", uri)


def default_tracking_uri(home: Path) -> str:
    """MLFLOW_TRACKING_URI, else the home's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
