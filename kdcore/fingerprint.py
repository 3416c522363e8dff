"""Stable content hashes: same inputs, same fingerprint, in any process."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import kdcore


def stable_hash(*parts: Any) -> str:
    """sha256 of the canonical JSON of ``parts`` (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The kdcore version plus a hash of its sources: any change to the library's code changes it."""
    root = Path(kdcore.__file__).parent
    h = hashlib.sha256(kdcore.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return f"{kdcore.__version__}+{h.hexdigest()[:12]}"


def stage_fingerprint(stage: str, section: Any, inputs: dict[str, str], data_fp: str) -> str:
    """What determines a stage's result: its config section, its inputs' fingerprints, the data
    fingerprint and the code version."""
    return stable_hash(stage, section, dict(sorted(inputs.items())), data_fp, code_version())
