"""What a run needs to be repeated: its complete resolved config (secrets redacted) as the artifact
``config.yaml``, and a readable code version (package version, source hash, git commit when the
code is a git checkout) as tags on the pipeline run and on every registered version."""

from __future__ import annotations

import functools
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import kdcore
from kdcore.config import PipelineConfig
from kdcore.fingerprint import code_version
from tasks.tracking import Tracker
from tasks.uris import redact

CONFIG_ARTIFACT = "config.yaml"
REDACTED = "***"
# a key named like a secret: "password", "hf_token", "api-key", "aws_secret_access_key" (not "tokenizer")
_SECRET_KEY = re.compile(r"(^|[_-])(password|passwd|secret|token|api[_-]?key|access[_-]?key|credentials?|auth)$", re.I)


def redacted(value: Any, key: str = "") -> Any:
    """``value`` with secret-named keys masked and credentials in URLs removed, recursively."""
    if isinstance(value, dict):
        return {k: redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, key) for v in value]
    if key and _SECRET_KEY.search(key) and value not in (None, "", {}, []):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    return value


def config_yaml(cfg: PipelineConfig) -> str:
    """The complete resolved config (every default filled in), secrets redacted, as YAML."""
    body = yaml.safe_dump(redacted(cfg.model_dump(mode="json")), sort_keys=False)
    return f"# kdflow resolved config (config hash {cfg.config_hash()})\n{body}"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the git checkout kdflow runs from (``-dirty`` when tracked files changed), else None."""
    root = Path(kdcore.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head or None


def package_version() -> str:
    try:
        return metadata.version("kdflow")
    except metadata.PackageNotFoundError:
        return kdcore.__version__


def code_tags() -> dict[str, str]:
    """Tags naming the code that ran: readable (``kdflow.code_version``) and in parts."""
    commit = git_commit()
    tags = {"kdflow.version": package_version(), "kdflow.code_hash": code_version()}
    readable = f"kdflow {tags['kdflow.version']} (sources {tags['kdflow.code_hash']}"
    if commit:
        tags["kdflow.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")  # shown by MLflow's UI
        readable += f", git {commit[:12]}{' with local changes' if commit.endswith('-dirty') else ''}"
    tags["kdflow.code_version"] = readable + ")"
    return tags


def log_provenance(tracker: Tracker, run_id: str, cfg: PipelineConfig) -> None:
    """``config.yaml`` and the code-version tags on the pipeline run ``run_id``."""
    tracker.log_text(run_id, config_yaml(cfg), CONFIG_ARTIFACT)
    tracker.set_tags(run_id, code_tags())
