"""`kdflow cache ls / verify / gc` on a real cache built by the features stage function."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_config
from flows.cli import app
from kdcore.data import load_dataset
from kdcore.models import create_model
from kdcore.stages import StageEnv, build_features


@pytest.fixture()
def cache_home(kdhome):
    cfg = tiny_config(data={"limit_train": 64, "limit_test": 16})
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    teacher = create_model("cnn_small", in_channels=1, num_classes=10)
    entries = build_features(StageEnv(cfg, data, kdhome / "w"), teacher, "sha", kdhome / "cache")
    return kdhome, {s: e for s, (e, _) in entries.items()}


def test_ls_lists_entries_with_sizes_and_keys(cache_home):
    _, entries = cache_home
    out = CliRunner().invoke(app, ["cache", "ls", "--long"], env={"COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    for e in entries.values():
        assert e.id[:12] in out.output and e.key in out.output
    assert "2 entries" in out.output and "train" in out.output and "val" in out.output


def test_verify_passes_then_reports_a_damaged_entry(cache_home):
    _, entries = cache_home
    ok = CliRunner().invoke(app, ["cache", "verify"])
    assert ok.exit_code == 0 and "2 checked, 0 damaged" in ok.output
    f = entries["train"].root / "logits.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    f.write_bytes(bytes(data))
    bad = CliRunner().invoke(app, ["cache", "verify", entries["train"].id[:8]])
    assert bad.exit_code == 1 and "DAMAGED" in bad.output and "sha256" in bad.output
    missing = CliRunner().invoke(app, ["cache", "verify", "zzzz"])
    assert missing.exit_code == 2 and "no cache entry" in missing.output


def test_gc_by_age_and_size(cache_home):
    home, entries = cache_home
    assert CliRunner().invoke(app, ["cache", "gc"]).exit_code == 2          # says what to give
    keep = CliRunner().invoke(app, ["cache", "gc", "--keep-days", "1"])
    assert keep.exit_code == 0 and "removed 0 entries" in keep.output
    dry = CliRunner().invoke(app, ["cache", "gc", "--max-size", "0", "--dry-run"])
    assert "would remove 2 entries" in dry.output and entries["train"].root.exists()
    gone = CliRunner().invoke(app, ["cache", "gc", "--max-size", "0"])
    assert gone.exit_code == 0 and not entries["train"].root.exists() and not entries["val"].root.exists()
    assert CliRunner().invoke(app, ["cache", "gc", "--max-size", "lots"]).exit_code == 2
