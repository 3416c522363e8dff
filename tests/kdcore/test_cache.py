"""The teacher cache: exact replay of augmented views, cached == online, damage detected, one
entry from concurrent builders, top-k compression, gc."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
import torch

from conftest import tiny_config
from kdcore.cache import CacheError, gc, list_entries, open_entry
from kdcore.data import load_dataset
from kdcore.data.augment import apply_views
from kdcore.losses import KDInputs, build_objective
from kdcore.models import create_model
from kdcore.stages import StageEnv, TeacherSource, build_features


@pytest.fixture(scope="module")
def data():
    return load_dataset(tiny_config().data.model_copy(update={"limit_train": 96, "limit_test": 32}))


def _env(data, tmp_path, **cache):
    cfg = tiny_config(
        cache=cache,
        distill={
            "losses": {
                "kd": {"weight": 1.0},
                "fitnet": {"weight": 1.0, "pairs": [{"student": "block1", "teacher": "block2"}]},
            }
        },
    )
    return StageEnv(cfg, data, tmp_path / "work")


def _teacher(data):
    torch.manual_seed(0)
    return create_model("cnn_small", in_channels=data.in_channels, num_classes=data.num_classes).eval()


def test_cached_view_equals_teacher_on_the_replayed_image(data, tmp_path):
    env = _env(data, tmp_path, views={"policy": "crop_flip", "num_views": 3, "pad": 2, "seed": 7})
    teacher = _teacher(data)
    entries = build_features(env, teacher, "sha-teacher", tmp_path / "cache", batch_size=40)
    train, built = entries["train"]
    assert built and train.num_views == 3 and train.manifest["count"] == len(data.train)
    logits = train.read_all("logits")  # [N, V, K]
    feats = train.read_all("block2")
    seeds = torch.from_numpy(train.seeds())
    x = data.train.x
    with torch.no_grad():
        for v in range(3):
            xv = apply_views(x, seeds[:, v], "crop_flip", 2)
            assert not torch.equal(xv, x), "the views really are augmented"
            torch.testing.assert_close(logits[:, v], teacher(xv), rtol=0, atol=1e-5)
    assert feats.shape[:2] == (len(x), 3)
    # views differ from each other
    assert not torch.allclose(logits[:, 0], logits[:, 1])


@pytest.mark.parametrize("dtype, atol", [("float32", 0.0), ("float16", 5e-3), ("bfloat16", 5e-2)])
def test_cached_and_online_distillation_give_the_same_losses(data, tmp_path, dtype, atol):
    env = _env(data, tmp_path, dtype=dtype, views={"policy": "shift", "num_views": 2, "pad": 1, "seed": 3})
    teacher = _teacher(data)
    entries = {s: e for s, (e, _) in build_features(env, teacher, "sha", tmp_path / "cache").items()}
    paths = ["block2"]
    cached = TeacherSource(env, entries, None, paths)
    online = TeacherSource(env, None, teacher, paths)
    assert np.array_equal(cached.seeds("train", len(data.train)), online.seeds("train", len(data.train)))
    idx = torch.tensor([5, 0, 17, 33, 2, 64])
    views = torch.tensor([1, 0, 1, 1, 0, 0])
    seeds = torch.from_numpy(cached.seeds("train", len(data.train)))[idx, views]
    xb = apply_views(data.train.x[idx], seeds, "shift", 1)
    student = create_model("cnn_tiny", in_channels=1, num_classes=10).eval()
    objective = build_objective(
        {
            "kd": {"weight": 1.0, "temperature": 4.0},
            "fitnet": {"weight": 1.0, "pairs": [{"student": "block1", "teacher": "block2"}]},
        }
    )
    from kdcore.hooks import FeatureTap, probe_shapes

    objective.build(probe_shapes(student, ["block1"], xb), cached.shapes())
    losses = []
    for source in (cached, online):
        t_logits, t_feats = source.get("train", idx, views, xb)
        with FeatureTap(student, ["block1"]) as tap, torch.no_grad():
            s_logits = student(xb)
            total, terms = objective(KDInputs(s_logits, t_logits, data.train.y[idx], dict(tap.features), t_feats))
        losses.append({"total": total, **terms})
    for name in losses[0]:
        torch.testing.assert_close(losses[0][name], losses[1][name], rtol=0, atol=atol)


def test_truncated_and_corrupted_entries_are_detected(data, tmp_path):
    env = _env(data, tmp_path)
    teacher = _teacher(data)
    entry = build_features(env, teacher, "sha", tmp_path / "cache")["train"][0]
    target = entry.root / "logits.npy"
    raw = bytearray(target.read_bytes())
    raw[-7] ^= 0xFF  # corrupt one byte, same size
    target.write_bytes(bytes(raw))
    open_entry(tmp_path / "cache", entry.key)  # a size check alone cannot see it...
    with pytest.raises(CacheError, match="fails its sha256 check"):
        open_entry(tmp_path / "cache", entry.key, checksums=True)  # ...the checksum does
    target.write_bytes(bytes(raw[:-100]))  # truncate
    with pytest.raises(CacheError, match="truncated"):
        open_entry(tmp_path / "cache", entry.key)
    strict = _env(data, tmp_path, rebuild=False)
    with pytest.raises(CacheError, match="rebuild"):
        build_features(strict, teacher, "sha", tmp_path / "cache")
    rebuilt, built = build_features(env, teacher, "sha", tmp_path / "cache")["train"]
    assert built and rebuilt.root == entry.root
    open_entry(tmp_path / "cache", rebuilt.key, checksums=True)


def test_concurrent_builders_produce_one_entry(data, tmp_path):
    teacher = _teacher(data)
    results, errors = [], []

    def build(i):
        try:
            env = _env(data, tmp_path / f"w{i}")
            results.append(build_features(env, teacher, "sha", tmp_path / "cache")["train"])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(built for _, built in results) == [False, True]
    assert results[0][0].root == results[1][0].root
    assert len([e for e in list_entries(tmp_path / "cache") if e.manifest["split"] == "train"]) == 1
    assert not list((tmp_path / "cache").glob(".build-*"))
    open_entry(tmp_path / "cache", results[0][0].key, checksums=True)


def _build_in_a_process(cache: str, workdir: str, barrier, results) -> None:
    """One of two processes building the same entry: same data, same teacher, started together."""
    import hashlib
    from pathlib import Path

    data = load_dataset(tiny_config().data.model_copy(update={"limit_train": 96, "limit_test": 32}))
    teacher = _teacher(data)
    env = _env(data, Path(workdir))
    barrier.wait(timeout=120)
    entry, built = build_features(env, teacher, "sha", Path(cache))["train"]
    digest = hashlib.sha256()
    for name in ("logits", *entry.paths):
        digest.update(entry.read(name, torch.arange(len(data.train))).numpy().tobytes())
    results.put((str(entry.root), built, digest.hexdigest()))


def test_two_processes_building_the_same_entry_make_one_and_read_the_same(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_build_in_a_process, args=(str(tmp_path / "cache"), str(tmp_path / f"w{i}"), barrier, results)
        )
        for i in range(2)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=300)  # the results are a few bytes: a finished child's queue never blocks its exit
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0], "a builder failed (its traceback is in the captured stderr)"
    got = [results.get(timeout=10) for _ in procs]
    assert sorted(built for _, built, _ in got) == [False, True], "one process built, the other reused"
    assert got[0][0] == got[1][0] and got[0][2] == got[1][2], "the same entry, the same bytes read"
    assert len([e for e in list_entries(tmp_path / "cache") if e.manifest["split"] == "train"]) == 1
    assert not list((tmp_path / "cache").glob(".build-*"))
    open_entry(tmp_path / "cache", list_entries(tmp_path / "cache")[0].key, checksums=True)


def test_topk_logits_are_renormalised_on_read(data, tmp_path):
    teacher = _teacher(data)
    env = _env(data, tmp_path, topk=3)
    entry = build_features(env, teacher, "sha", tmp_path / "cache")["train"][0]
    assert "logits.values.npy" in entry.manifest["files"] and "logits.npy" not in entry.manifest["files"]
    idx = torch.arange(10)
    got = torch.softmax(entry.read("logits", idx) / 4.0, dim=1)
    with torch.no_grad():
        full = teacher(data.train.x[:10]) / 4.0
    top = full.topk(3, dim=1)
    expected = torch.zeros_like(full).scatter_(1, top.indices, torch.softmax(top.values, dim=1))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_an_entry_with_more_paths_serves_a_request_for_fewer(data, tmp_path):
    teacher = _teacher(data)
    big = build_features(_env(data, tmp_path, features=["block1"]), teacher, "sha", tmp_path / "cache")["train"]
    assert big[1] and set(big[0].paths) == {"block1", "block2"}
    cfg_small = tiny_config()  # logits only
    small = build_features(StageEnv(cfg_small, data, tmp_path / "w2"), teacher, "sha", tmp_path / "cache")["train"]
    assert not small[1] and small[0].root == big[0].root


def test_gc_removes_old_and_oversize_entries(data, tmp_path):
    teacher = _teacher(data)
    entries = build_features(_env(data, tmp_path), teacher, "sha", tmp_path / "cache")
    old = entries["val"][0]
    (old.root / "last_used").write_text(str(time.time() - 10 * 86400))
    removed = gc(tmp_path / "cache", keep_days=5)
    assert [e.id for e in removed] == [old.id] and not old.root.exists()
    removed = gc(tmp_path / "cache", max_size=1)
    assert not list_entries(tmp_path / "cache")


@pytest.mark.parametrize("topk,dtype", [(None, "float32"), (3, "float32"), (None, "bfloat16"), (None, "float16")])
def test_rows_gathered_on_the_device_equal_the_host_read(data, tmp_path, topk, dtype):
    """An accelerator run copies the stored rows to the device once and gathers there, a CPU run
    gathers from the entry's own memory; the rows are the host read's, for every view, feature path
    and top-k reconstruction (here on the CPU)."""
    env = _env(data, tmp_path, topk=topk, dtype=dtype, views={"policy": "shift", "num_views": 3, "pad": 1, "seed": 2})
    entries = {s: e for s, (e, _) in build_features(env, _teacher(data), "sha", tmp_path / "cache").items()}
    host = TeacherSource(env, entries, None, ["block2"])
    host.rows_on_device = False  # read per batch from the stored arrays
    device = TeacherSource(env, entries, None, ["block2"])
    device.share_host_rows, device.device_budget = False, 1 << 30  # the accelerator's copy
    shared = TeacherSource(env, entries, None, ["block2"])  # the CPU's default
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train), generator=gen)[:20]
    views = torch.randint(0, 3, (20,), generator=gen)
    (h_logits, h_feats), (d_logits, d_feats), (c_logits, c_feats) = (
        s.get("train", idx, views, data.train.x[idx]) for s in (host, device, shared)
    )
    assert h_logits.dtype == c_logits.dtype == c_feats["block2"].dtype == torch.float32
    assert host._device_rows == {}
    assert device._device_rows[("train", "logits")] is not None and device._device_rows[("train", "block2")] is not None
    assert torch.equal(h_logits, d_logits) and torch.equal(h_feats["block2"], d_feats["block2"])
    assert torch.equal(h_logits, c_logits) and torch.equal(h_feats["block2"], c_feats["block2"])
    assert not torch.equal(d_logits, device.get("train", idx, (views + 1) % 3, data.train.x[idx])[0])  # views matter
    assert not torch.equal(c_logits, shared.get("train", idx, (views + 1) % 3, data.train.x[idx])[0])
    # the CPU's rows are the entry's own memory (no copy); top-k logits are read per batch
    features = shared._device_rows[("train", "block2")]
    assert features is not None
    assert features.data_ptr() == entries["train"]._array("block2").ctypes.data
    assert (shared._device_rows[("train", "logits")] is None) is (topk is not None)
    # a budget too small for the features: every output read on the host again, the same values
    small = TeacherSource(env, entries, None, ["block2"])
    small.share_host_rows = False
    small.device_budget = 4 * len(data.train) * 3 * data.num_classes  # the logits alone
    s_logits, s_feats = small.get("train", idx, views, data.train.x[idx])
    assert small._device_rows[("train", "logits")] is not None and small._device_rows[("train", "block2")] is None
    assert (
        small.device_budget == 0
        and torch.equal(s_logits, h_logits)
        and torch.equal(s_feats["block2"], h_feats["block2"])
    )
    # pickled to another process (a DDP rank) without the rows it copied to this one's device
    again = pickle.loads(pickle.dumps(device))
    assert again._device_rows == {} and again._split_rows == {} and again.rows_on_device and not again.share_host_rows
    assert torch.equal(again.get("train", idx, views, data.train.x[idx])[0], h_logits)
