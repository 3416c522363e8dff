"""A run can be repeated: its complete resolved config as YAML with secrets redacted, and a
readable code version. (Logged on a real pipeline run: tests/test_tracking_door.py.)"""

from __future__ import annotations

import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from kdcore.config import PipelineConfig
from tasks import provenance
from tasks.provenance import REDACTED, code_tags, config_yaml, redacted

ROOT = Path(__file__).resolve().parents[2]


def test_secrets_are_redacted_and_everything_else_kept():
    raw = {
        "data": {
            "root": "s3://AKIA:hunter2@bucket/data",
            "options": {
                "hf_token": "hf_abc",
                "api_key": "k",
                "password": "pw",
                "tokenizer": "bert",
                "max_tokens": 512,
                "auth": None,
            },
        },
        "list": [{"secret": "x"}, "plain"],
    }
    out = redacted(raw)
    assert out["data"]["root"] == "s3://***@bucket/data"
    opts = out["data"]["options"]
    assert opts["hf_token"] == opts["api_key"] == opts["password"] == REDACTED
    assert opts["tokenizer"] == "bert" and opts["max_tokens"] == 512 and opts["auth"] is None
    assert out["list"] == [{"secret": REDACTED}, "plain"]
    assert raw["data"]["options"]["hf_token"] == "hf_abc", "the input is not modified"


def test_config_yaml_is_the_complete_resolved_config():
    cfg = tiny_config(distill={"temperature": 3.0})
    text = config_yaml(cfg)
    assert text.startswith(f"# kdflow resolved config (config hash {cfg.config_hash()})")
    loaded = yaml.safe_load(text)
    assert PipelineConfig.model_validate(loaded) == cfg
    # every default is written out, not only what the user set
    assert loaded["trainer"]["seed"] == 0 and loaded["distill"]["temperature"] == 3.0
    assert set(loaded) == set(PipelineConfig.model_fields)


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_code_version_names_the_package_and_the_commit():
    from tasks.provenance import git_commit

    git_commit.cache_clear()  # read once per process: a commit made while the session ran would not show
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = code_tags()
    assert tags["kdflow.version"] == metadata.version("kdflow")
    assert tags["kdflow.git_commit"].removesuffix("-dirty") == head
    assert tags["mlflow.source.git.commit"] == head
    assert tags["kdflow.code_hash"].startswith(tags["kdflow.version"] + "+")
    assert f"git {head[:12]}" in tags["kdflow.code_version"]
    assert tags["kdflow.code_version"].startswith(f"kdflow {tags['kdflow.version']} (sources ")


def test_code_version_without_git(monkeypatch):
    monkeypatch.setattr(provenance, "git_commit", lambda: None)
    tags = code_tags()
    assert "kdflow.git_commit" not in tags and "mlflow.source.git.commit" not in tags
    assert tags["kdflow.code_version"] == f"kdflow {tags['kdflow.version']} (sources {tags['kdflow.code_hash']})"
