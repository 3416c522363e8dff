"""Where kdflow keeps things: KDFLOW_HOME (default ./.kdflow) holds artifacts, cache and the
default MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

from kdcore.errors import KdflowError


def kdflow_home() -> Path:
    home = Path(os.environ.get("KDFLOW_HOME", ".kdflow")).expanduser().resolve()
    if home.exists() and not home.is_dir():
        raise KdflowError(f"KDFLOW_HOME {home} is a file, not a directory; set KDFLOW_HOME to a writable directory")
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise KdflowError(
            f"KDFLOW_HOME {home} is not writable ({exc.strerror}); set KDFLOW_HOME to a writable directory"
        ) from None
    return home


def stage_dir(home: Path, stage: str, fingerprint: str) -> Path:
    return home / "runs" / stage / fingerprint[:16]


def cache_dir(home: Path) -> Path:
    return home / "cache"
