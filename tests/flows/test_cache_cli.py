"""`kdflow cache ls / verify / gc` on a real cache built by the features stage function."""

from __future__ import annotations

import re
import time

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


def test_ls_piped_keeps_every_column_whole(cache_home, monkeypatch):
    """Output that is not a terminal (a pipe, CliRunner) at the default 80 columns: the last-use time of
    every entry is printed in full, not cut to "2026-12-"."""
    monkeypatch.delenv("COLUMNS", raising=False)
    out = CliRunner().invoke(app, ["cache", "ls"])
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if line.split()[:1] and len(line.split()[0]) == 12]
    assert len(rows) == 2 and all(re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}$", r.rstrip()) for r in rows), out.output
    assert "last used" in out.output


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
    assert missing.exit_code == 2 and "no cache entry with id 'zzzz'" in missing.stderr


def test_gc_by_age_and_size(cache_home):
    home, entries = cache_home
    assert CliRunner().invoke(app, ["cache", "gc"]).exit_code == 2  # says what to give
    keep = CliRunner().invoke(app, ["cache", "gc", "--keep-days", "1"])
    assert keep.exit_code == 0 and "removed 0 entries" in keep.output
    dry = CliRunner().invoke(app, ["cache", "gc", "--max-size", "0", "--dry-run"])
    assert "would remove 2 entries" in dry.output and entries["train"].root.exists()
    gone = CliRunner().invoke(app, ["cache", "gc", "--max-size", "0"])
    assert gone.exit_code == 0 and not entries["train"].root.exists() and not entries["val"].root.exists()
    assert CliRunner().invoke(app, ["cache", "gc", "--max-size", "lots"]).exit_code == 2


def test_gc_max_size_removes_least_recently_used_first(cache_home):
    """Four entries used at distinct times, oldest to newest: A.train, B.val, A.val, B.train. A size
    that holds exactly the newest two removes the other two, oldest first, whatever their sizes."""
    home, a = cache_home
    cfg = tiny_config(data={"limit_train": 64, "limit_test": 16})
    torch.manual_seed(1)
    teacher_b = create_model("cnn_small", in_channels=1, num_classes=10)
    b = {
        s: e
        for s, (e, _) in build_features(
            StageEnv(cfg, load_dataset(cfg.data), home / "w2"), teacher_b, "sha-b", home / "cache"
        ).items()
    }
    order = [a["train"], b["val"], a["val"], b["train"]]
    assert len({e.id for e in order}) == 4 and a["train"].size_bytes() > a["val"].size_bytes()
    now = time.time()
    for age_days, e in zip((4, 3, 2, 1), order):
        (e.root / "last_used").write_text(str(now - age_days * 86400))
    newest_two = order[2].size_bytes() + order[3].size_bytes()
    for args, verb in ((["--dry-run"], "would remove"), ([], "removed")):
        res = CliRunner().invoke(app, ["cache", "gc", "--max-size", str(newest_two), *args])
        assert res.exit_code == 0, res.output
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith(verb + " ") and "entries" not in ln]
        assert [ln.split()[len(verb.split())] for ln in lines] == [order[0].id, order[1].id], res.stdout
    assert [e.root.exists() for e in order] == [False, False, True, True]
    left = CliRunner().invoke(app, ["cache", "ls"], env={"COLUMNS": "160"})
    assert "2 entries" in left.stdout and order[2].id[:12] in left.stdout and order[3].id[:12] in left.stdout
    one_byte_less = CliRunner().invoke(app, ["cache", "gc", "--max-size", str(newest_two - 1), "--dry-run"])
    assert f"would remove {order[2].id}" in one_byte_less.stdout and order[3].id not in one_byte_less.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["verify", "zzzz"], "no cache entry with id 'zzzz' in {home}/cache"),
        (["gc"], "give --keep-days N and/or --max-size SIZE"),
        (["gc", "--keep-days", "-1"], "--keep-days must be >= 0, got -1.0"),
        (["gc", "--max-size", "lots"], "--max-size 'lots' is not a size"),
        (["gc", "--max-size", "-5MB"], "--max-size '-5MB' is not a size"),
        (["ls"], "KDFLOW_HOME {home} is a file, not a directory"),
        (["verify"], "KDFLOW_HOME {home} is a file, not a directory"),
        (["gc", "--keep-days", "1"], "KDFLOW_HOME {home} is a file, not a directory"),
    ],
    ids=[
        "verify-unknown-id",
        "gc-no-option",
        "gc-negative-days",
        "gc-bad-size",
        "gc-negative-size",
        "ls-bad-home",
        "verify-bad-home",
        "gc-bad-home",
    ],
)
def test_every_cache_error_goes_to_stderr_with_exit_2(args, message, kdhome):
    if "KDFLOW_HOME" in message:
        kdhome.parent.mkdir(parents=True, exist_ok=True)
        kdhome.write_text("a file where the home should be")
    res = CliRunner().invoke(app, ["cache", *args])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ") and message.format(home=kdhome) in res.stderr, res.stderr
    assert res.stdout == "", res.stdout


@pytest.mark.parametrize(
    "text, size",
    [
        ("1024", 1024),
        ("500MB", 500 * 10**6),
        ("2G", 2 * 10**9),
        ("2GB", 2 * 10**9),
        ("2GiB", 2 * 2**30),
        (" 1.5 kb ", 1500),
    ],
)
def test_max_size_reads_units(text, size):
    from flows.cache_cli import parse_size

    assert parse_size(text) == size


def test_decoded_stores_are_listed_and_cleaned(kdhome, tmp_path):
    from kdcore.data.decoded_store import build_store

    images = [torch.zeros((3, 8, 8), dtype=torch.uint8)] * 5
    default = build_store(kdhome / "data" / "decoded", "f" * 64, {"train": 5}, lambda split: images)
    elsewhere = build_store(tmp_path / "mine", "e" * 64, {"train": 5}, lambda split: images)
    listed = CliRunner().invoke(app, ["cache", "ls"], env={"COLUMNS": "160"})
    assert listed.exit_code == 0, listed.output
    assert "decoded image stores" in listed.output and "f" * 16 in listed.output and "train 5" in listed.output
    assert "1 decoded store," in listed.output and "e" * 16 not in listed.output
    dry = CliRunner().invoke(app, ["cache", "gc", "--decoded", "--max-size", "0", "--dry-run"])
    assert dry.exit_code == 0 and "would remove 1 decoded store," in dry.output and default.exists()
    gone = CliRunner().invoke(app, ["cache", "gc", "--decoded", "--keep-days", "0"])
    assert gone.exit_code == 0 and "removed 1 decoded store," in gone.output and not default.exists()
    assert elsewhere.exists()  # another folder only when named
    mine = CliRunner().invoke(
        app, ["cache", "gc", "--decoded", "--max-size", "0", "--decoded-dir", str(tmp_path / "mine")]
    )
    assert mine.exit_code == 0 and "removed 1 decoded store," in mine.output and not elsewhere.exists()
