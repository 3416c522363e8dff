"""The decoded-image store (data.decoded_store): image files decoded once, read back with pread.

It must change no result: the pixels it gives back are the decoder's, bit for bit, so items,
crops and a trained student are the same with and without it. It is built once per data
fingerprint (edited files: a new store), by one of several processes loading at the same time, and
a build that fails leaves nothing a later load would read."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from images import write_image_folder

from conftest import tiny_config
from kdcore.config import DataConfig
from kdcore.data import load_dataset
from kdcore.data.decoded_store import build_store, open_store
from kdcore.data.stream import ImageFileSplit, decode
from kdcore.stages import StageEnv, train_baseline


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "imgs", per_class=20)


def data_cfg(folder, store_dir, **kw) -> DataConfig:
    base = dict(name="imagefolder", root=str(folder), image_size=32, in_memory=False, num_workers=1)
    return DataConfig(**{**base, "decoded_store_dir": str(store_dir), **kw})


def test_store_gives_the_decoders_pixels_and_the_same_items(folder, tmp_path):
    stored = load_dataset(data_cfg(folder, tmp_path / "s", decoded_store=True, augment={"scale": [0.4, 1.0]}))
    plain = load_dataset(data_cfg(folder, tmp_path / "p", decoded_store=False, augment={"scale": [0.4, 1.0]}))
    assert stored.fingerprint == plain.fingerprint  # the store is not part of the data's identity
    assert plain.extras["decoded_store"] is None and not (tmp_path / "p").exists()
    where = tmp_path / "s" / stored.fingerprint
    assert stored.extras["decoded_store"] == str(where) and (where / "complete").is_file()
    for split in ("train", "val", "test"):
        s, p = getattr(stored, split), getattr(plain, split)
        assert isinstance(s, ImageFileSplit) and s.store is not None and p.store is None
        assert len(s.store) == len(s)
        for i in range(len(s)):
            assert torch.equal(s.store.read(i), decode(s.paths[i], False))
    ds, dp = stored.train.dataset(), plain.train.dataset()
    items = [(i, 31 * i + 5) for i in range(len(ds))] + list(range(10))  # train views and eval views
    a, b = ds.__getitems__(items), dp.__getitems__(items)
    for key in ("idx", "x", "y", "crop"):
        assert torch.equal(a[key], b[key]), key
    assert torch.equal(stored.test.x[0:7], plain.test.x[0:7])
    # and the reads really come from the store: zeroed store bytes give black images
    pixels = where / "train.u8"
    pixels.write_bytes(bytes(pixels.stat().st_size))
    assert int(stored.train.dataset().view(3)[1].sum()) == 0


def test_a_student_trains_to_the_same_weights_with_and_without_the_store(folder, tmp_path):
    torch.set_num_threads(1)
    models = {}
    for store in (True, False):
        cfg = tiny_config(
            baseline={"enabled": True, "train": {"max_epochs": 1, "batch_size": 16, "lr": 0.05}},
            trainer={"num_threads": 1, "seed": 3},
        ).model_copy(update={"data": data_cfg(folder, tmp_path / "stores", decoded_store=store)})
        data = load_dataset(cfg.data)
        assert (data.train.store is not None) == store
        models[store] = train_baseline(StageEnv(cfg, data, tmp_path / f"run-{store}")).model.state_dict()
    assert models[True].keys() == models[False].keys()
    for k in models[True]:
        assert torch.equal(models[True][k], models[False][k]), k


def test_auto_writes_the_store_only_within_the_budget(folder, tmp_path):
    # 60 images x 3 x 32 x 32 bytes = 184 kB
    small = load_dataset(data_cfg(folder, tmp_path / "a", decoded_store_budget="100kB"))
    assert small.extras["decoded_store"] is None and not (tmp_path / "a").exists()
    big = load_dataset(data_cfg(folder, tmp_path / "b", decoded_store_budget="1MB"))
    assert big.extras["decoded_store"] is not None and big.train.store is not None


def test_edited_files_make_a_new_store(folder, tmp_path):
    import os
    import shutil

    from PIL import Image

    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    first = load_dataset(data_cfg(root, tmp_path / "s", decoded_store=True))
    path = first.train.paths[0]
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
    os.utime(path, ns=(1, 1))
    second = load_dataset(data_cfg(root, tmp_path / "s", decoded_store=True))
    assert second.fingerprint != first.fingerprint
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == sorted(
        [first.fingerprint, second.fingerprint]
    )
    assert int(second.train.store.read(0).sum()) == 0
    assert int(first.train.store.read(0).sum()) > 0  # the old store is untouched


def _images(n: int, calls: list[str], fail_at: int = -1):
    def images(split: str):
        calls.append(split)
        for i in range(n):
            if i == fail_at:
                raise OSError("disk full")
            yield torch.full((1, 2, 3), i, dtype=torch.uint8)

    return images


def test_concurrent_builders_build_once(tmp_path):
    calls: list[str] = []
    images = _images(50, calls)
    folders = []
    threads = [
        threading.Thread(target=lambda: folders.append(build_store(tmp_path, "fp", {"train": 50}, images)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["train"] and len(set(folders)) == 1 and len(folders) == 4
    store = open_store(folders[0], "train")
    assert [int(store.read(i)[0, 0, 0]) for i in range(50)] == list(range(50))


def test_a_failed_build_leaves_nothing_to_read(tmp_path):
    calls: list[str] = []
    with pytest.raises(OSError, match="disk full"):
        build_store(tmp_path, "fp", {"train": 10}, _images(10, calls, fail_at=6))
    assert not (tmp_path / "fp").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".fp.lock"]  # no half-written folder left behind
    folder = build_store(tmp_path, "fp", {"train": 10}, _images(10, calls))
    assert (folder / "complete").is_file() and len(open_store(folder, "train")) == 10


def test_an_unreadable_file_fails_the_build_with_its_name(tmp_path):
    from kdcore.errors import DataError

    root = write_image_folder(tmp_path / "imgs", per_class=5)
    bad = root / "c1" / "3.png"
    bad.write_bytes(b"not an image")
    # the statistics sample would meet the file first: build the store straight from the split's files
    from kdcore.data.stream import _decoded

    paths = sorted(str(p) for p in root.rglob("*.png"))
    with pytest.raises(DataError) as info:
        build_store(tmp_path / "stores", "fp", {"train": len(paths)}, lambda split: _decoded(paths, False, 1))
    assert str(info.value).startswith(f"cannot read image {bad}: Unsupported image file")
    assert "Traceback" not in str(info.value)
    assert ".cpp" not in str(info.value)  # the decoder's message, without its C++ source location
    assert not (tmp_path / "stores" / "fp").exists()


def _store(root, fingerprint: str, n: int):
    images = [torch.full((3, 4, 4), i, dtype=torch.uint8) for i in range(n)]
    return build_store(
        root, fingerprint, {"train": n, "val": 2}, lambda split: images if split == "train" else images[:2]
    )


def test_stores_are_listed_and_removed_by_last_use_and_size(tmp_path):
    import os
    import time

    from kdcore.data.decoded_store import list_stores, remove_stores

    root = tmp_path / "stores"
    old, mid, new = (_store(root, fp, n) for fp, n in (("old", 30), ("mid", 20), ("new", 10)))
    now = time.time()
    for folder, days in ((old, 10), (mid, 5), (new, 1)):
        os.utime(folder / "complete", (now - days * 86400, now - days * 86400))
    stores = list_stores(root)
    assert [s.id for s in stores] == ["old", "mid", "new"]  # least recently used first
    assert stores[0].splits == {"train": 30, "val": 2} and stores[0].size_bytes > stores[1].size_bytes
    _store(root, "old", 30)  # loading it again marks it used: now the most recent
    assert [s.id for s in list_stores(root)] == ["mid", "new", "old"]
    assert [s.id for s in remove_stores(root, keep_days=3, dry_run=True)] == ["mid"] and mid.exists()
    assert [s.id for s in remove_stores(root, keep_days=3)] == ["mid"] and not mid.exists()
    # a size that holds only the most recent store removes the other, least recently used first
    left = {s.id: s.size_bytes for s in list_stores(root)}
    assert [s.id for s in remove_stores(root, max_size=left["old"])] == ["new"]
    assert [s.id for s in list_stores(root)] == ["old"] and len(open_store(old, "train")) == 30


def test_gc_removes_what_a_killed_build_left_but_not_a_running_build(tmp_path):
    import fcntl

    from kdcore.data.decoded_store import remove_stores

    root = tmp_path / "stores"
    root.mkdir()
    killed = root / ".aaaa-x1y2z3w4"  # build_store's temporary folder, its builder gone
    (killed / "train.u8").parent.mkdir()
    (killed / "train.u8").write_bytes(b"\0" * 10)
    running = root / ".bbbb-q9r8s7t6"
    running.mkdir()
    with open(root / ".bbbb.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as build_store holds it while it writes
        assert remove_stores(root, keep_days=0) == []
        assert not killed.exists() and running.exists()


def test_a_store_loaded_after_gc_listed_it_is_kept(tmp_path, monkeypatch):
    import os
    import time

    from kdcore.data import decoded_store

    root = tmp_path / "stores"
    folder = _store(root, "busy", 4)
    past = time.time() - 30 * 86400
    os.utime(folder / "complete", (past, past))
    listed = decoded_store.list_stores(root)  # gc's view: unused for 30 days
    _store(root, "busy", 4)  # then a load finds and marks it, before gc takes the lock
    monkeypatch.setattr(decoded_store, "list_stores", lambda root: listed)
    assert decoded_store.remove_stores(root, keep_days=1) == [] and (folder / "complete").is_file()
