"""Datasets: loaders, splits, normalisation, fingerprints and the errors users see. No downloads."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.config import DataConfig
from kdcore.data import DATASETS, DataBundle, RawData, load_dataset, make_splits
from kdcore.data import fashion_mnist as fashion_module
from kdcore.data.idx import read_idx
from kdcore.errors import ConfigError, DataError, KdflowError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Nothing may be written to, or read from, the user's ./.kdflow."""
    monkeypatch.setenv("KDFLOW_HOME", str(tmp_path / "kdflow_home"))


def sizes(b: DataBundle) -> dict[str, int]:
    return {k: len(s) for k, s in b.splits().items()}


# ------------------------------------------------------------------------------------------
# helpers that write small files in the real formats


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> Path:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    blob = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(blob))
    else:
        path.write_bytes(blob)
    return path


def write_fashion(folder: Path, n_train: int = 40, n_test: int = 20, compress: bool = True, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 30) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        batch = {
            "batch_label": f"training batch {i} of 5",
            "labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": ["x.png"] * per_batch,
        }
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {
        "batch_label": "testing batch 1 of 1",
        "labels": [int(v) for v in np.arange(n_test) % 10],
        "data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))
    return folder


def write_pngs(folder: Path, classes: dict[str, int], size=(12, 10), seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / name / f"{i:03d}.png")


@pytest.fixture
def fake_dataset(monkeypatch):
    """Register a throw-away dataset returning the RawData given, removed after the test."""

    def register(raw: RawData, name: str = "fake") -> DataConfig:
        monkeypatch.setitem(DATASETS._items, name, lambda cfg: raw)
        return DataConfig(name=name)

    return register


# ------------------------------------------------------------------------------------------
# built-in datasets


def test_registry_lists_builtin_datasets_and_rejects_unknown():
    assert {"digits", "mnist5k", "fashion_mnist", "cifar10", "cifar100", "imagefolder"} <= set(DATASETS.names())
    with pytest.raises(KdflowError, match="known datasets: .*digits.*mnist5k"):
        load_dataset(DataConfig(name="nope"))


def test_digits_counts_shapes_and_determinism():
    b = load_dataset(DataConfig(name="digits"))
    assert sizes(b) == {"train": 1294, "val": 144, "test": 359}
    assert sum(sizes(b).values()) == 1797
    assert b.input_shape == (1, 8, 8) and b.in_channels == 1 and b.num_classes == 10
    assert b.train.x.dtype == torch.float32 and b.train.y.dtype == torch.int64
    assert b.train.x.shape == (1294, 1, 8, 8)
    again = load_dataset(DataConfig(name="digits"))
    assert again.fingerprint == b.fingerprint and len(b.fingerprint) == 64
    assert torch.equal(again.val.x, b.val.x) and torch.equal(again.test.y, b.test.y)
    other = load_dataset(DataConfig(name="digits", split_seed=1))
    assert other.fingerprint != b.fingerprint
    assert sizes(other) == sizes(b) and not torch.equal(other.test.y, b.test.y)
    assert load_dataset(DataConfig(name="digits", val_fraction=0.2)).fingerprint != b.fingerprint


def test_digits_are_scikit_learns_rows_read_without_importing_it(monkeypatch):
    """kdcore reads scikit-learn's digits file itself (kdcore/data/sklearn_digits.py): the same rows
    as sklearn.datasets.load_digits, which it falls back to where the file is not found; loading them
    in a fresh process imports no scikit-learn."""
    from sklearn.datasets import load_digits as sk_load_digits

    from kdcore.data import sklearn_digits

    ours = sklearn_digits.load_digits(DataConfig(name="digits"))
    theirs = sk_load_digits()
    assert ours.train_x.shape == (1797, 1, 8, 8) and ours.train_x.dtype == np.uint8
    assert np.array_equal(ours.train_x[:, 0], theirs.images) and np.array_equal(ours.train_y, theirs.target)
    assert ours.class_names == [str(int(c)) for c in theirs.target_names]
    read = load_dataset(DataConfig(name="digits")).fingerprint
    monkeypatch.setattr(sklearn_digits, "bundled_file", lambda: None)
    fallback = sklearn_digits.load_digits(DataConfig(name="digits"))
    assert np.array_equal(fallback.train_x, ours.train_x) and np.array_equal(fallback.train_y, ours.train_y)
    assert load_dataset(DataConfig(name="digits")).fingerprint == read
    code = (
        "import sys; from kdcore.config import DataConfig; from kdcore.data import load_dataset;"
        "load_dataset(DataConfig(name='digits')); print(sorted(m for m in sys.modules if m.startswith('sklearn')))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]


def test_mnist5k_counts_and_stratified_splits():
    b = load_dataset(DataConfig(name="mnist5k"))
    assert sum(sizes(b).values()) == 5000
    assert sizes(b) == {"train": 3600, "val": 400, "test": 1000}
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10 and b.class_names == [str(i) for i in range(10)]
    # 500 images per class, so every split is exactly balanced
    assert b.test.y.bincount().tolist() == [100] * 10
    assert b.val.y.bincount().tolist() == [40] * 10


def test_normalisation_uses_train_statistics():
    b = load_dataset(DataConfig(name="mnist5k", limit_train=500, limit_test=200))
    per_channel_mean = b.train.x.mean(dim=(0, 2, 3))
    per_channel_std = b.train.x.std(dim=(0, 2, 3))
    assert torch.allclose(per_channel_mean, torch.zeros(1), atol=1e-4)
    assert torch.allclose(per_channel_std, torch.ones(1), atol=1e-3)
    assert len(b.mean) == len(b.std) == 1 and 0.05 < b.mean[0] < 0.3
    # the other splits use the same (train) statistics, so they are only roughly centred
    assert abs(b.test.x.mean().item()) < 0.2 and b.test.x.mean().item() != pytest.approx(0.0, abs=1e-6)
    # un-normalising gives back pixels in [0, 1]
    pixels = b.test.x * b.std[0] + b.mean[0]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert torch.allclose(b.normalize(pixels), b.test.x, atol=1e-5)


def test_limits_and_fingerprint_follow_them():
    full = load_dataset(DataConfig(name="digits"))
    small = load_dataset(DataConfig(name="digits", limit_train=50, limit_test=30))
    assert sizes(small) == {"train": 50, "val": 10, "test": 30}
    assert small.fingerprint != full.fingerprint
    # limiting keeps the first samples of the same (seeded) splits
    assert torch.equal(small.train.y, full.train.y[:50])
    tiny = load_dataset(DataConfig(name="digits", limit_train=3))
    assert len(tiny.val) == 1


def test_fingerprint_is_stable_across_processes():
    b = load_dataset(DataConfig(name="digits", limit_train=100))
    code = (
        "from kdcore.config import DataConfig; from kdcore.data import load_dataset; "
        "print(load_dataset(DataConfig(name='digits', limit_train=100)).fingerprint)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == b.fingerprint


def test_make_splits_are_disjoint_deterministic_and_stratified():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    cfg = DataConfig(name="x", val_fraction=0.1, test_fraction=0.2, split_seed=7)
    s = make_splits("x", y, None, cfg)
    all_idx = np.concatenate([s.train, s.val, s.test])
    assert len(all_idx) == len(y) == len(np.unique(all_idx))
    assert len(s.test) == 20 and len(s.val) == 8 and not s.test_is_official
    assert np.bincount(y[s.test], minlength=4).tolist() == [10, 6, 3, 1]
    again = make_splits("x", y, None, cfg)
    assert np.array_equal(again.train, s.train) and np.array_equal(again.test, s.test)
    official = make_splits("x", y, 40, cfg.model_copy(update={"limit_test": 25}))
    assert official.test_is_official and official.test.tolist() == list(range(25))
    assert len(official.train) + len(official.val) == len(y)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    assert read_idx(DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz").shape == (10000,)
    b = load_dataset(DataConfig(name="fashion_mnist", limit_train=200, limit_test=100))
    assert sizes(b) == {"train": 200, "val": 40, "test": 100}
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10 and b.class_names[0] == "T-shirt/top"
    # the (unlimited) source has 60000 + 10000 images
    assert make_splits("f", np.zeros(60000, dtype=np.int64), 10000, DataConfig()).val.shape == (6000,)


# ------------------------------------------------------------------------------------------
# files written by the tests, in the real formats


def test_fashion_mnist_from_written_idx_files(tmp_path):
    write_fashion(tmp_path, n_train=40, n_test=20)
    b = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert sizes(b) == {"train": 36, "val": 4, "test": 20}
    assert b.test.y.tolist() == [i % 10 for i in range(20)]


def test_fashion_mnist_torchvision_layout_plain_files(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw", n_train=30, n_test=10, compress=False)
    b = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert len(b.train) + len(b.val) == 30 and len(b.test) == 10


def test_fashion_mnist_missing_lists_places_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "SYSTEM_DIRS", [tmp_path / "no-system-copy"])
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path / "empty")))
    msg = str(err.value)
    for place in (tmp_path / "empty", tmp_path / "empty" / "FashionMNIST" / "raw"):
        assert str(place) in msg
    assert str(tmp_path / "no-system-copy") not in msg, "a root the user names is the only place looked in"
    assert "apt-get install dataset-fashion-mnist" in msg and "data.download: true" in msg
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="fashion_mnist"))
    for place in (tmp_path / "no-system-copy", tmp_path / "kdflow_home" / "data" / "FashionMNIST" / "raw"):
        assert str(place) in str(err.value)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_idx_file_names_the_file(tmp_path, compress):
    write_fashion(tmp_path, n_train=20, n_test=10, compress=compress)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else ""))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert str(path) in str(err.value)
    if not compress:
        assert f"expected {20 * 28 * 28} bytes of image data" in str(err.value)


def test_idx_bad_magic_and_count_mismatch(tmp_path):
    bad = tmp_path / "bad-idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(bad)
    write_fashion(tmp_path / "f", n_train=20, n_test=10)
    write_idx(tmp_path / "f" / "train-labels-idx1-ubyte", np.zeros(19))
    with pytest.raises(DataError, match="has 20 images but .* has 19 labels"):
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path / "f")))


def test_cifar10_from_written_python_batches(tmp_path):
    write_cifar10(tmp_path, per_batch=20, n_test=30)
    b = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert sizes(b) == {"train": 90, "val": 10, "test": 30}
    assert b.input_shape == (3, 32, 32) and b.in_channels == 3 and len(b.mean) == 3
    assert b.class_names[0] == "airplane" and b.num_classes == 10
    assert torch.allclose(b.train.x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)


def test_cifar_missing_files_without_download(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg and "data.download: true" in msg
    with pytest.raises(DataError, match="CIFAR-100 files not found"):
        load_dataset(DataConfig(name="cifar100"))  # default root: $KDFLOW_HOME/data
    assert not (tmp_path / "kdflow_home").exists()


def test_cifar_refuses_pickles_that_would_run_code(tmp_path):
    folder = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DataError, match="data_batch_3 is not a valid CIFAR python file"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert not (tmp_path / "pwned").exists()


def test_imagefolder_carves_test_split(tmp_path):
    write_pngs(tmp_path / "imgs", {"cat": 10, "dog": 10})
    b = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "imgs")))
    assert b.class_names == ["cat", "dog"] and b.input_shape == (3, 10, 12)
    assert sizes(b) == {"train": 14, "val": 2, "test": 4}
    grey = load_dataset(
        DataConfig(name="imagefolder", root=str(tmp_path / "imgs"), image_size=8, options={"grayscale": True})
    )
    assert grey.input_shape == (1, 8, 8)


def test_imagefolder_official_train_test_and_sizes(tmp_path):
    write_pngs(tmp_path / "train", {"a": 6, "b": 6}, size=(16, 16))
    write_pngs(tmp_path / "test", {"a": 2, "b": 3}, size=(20, 20))
    with pytest.raises(DataError, match="set data.image_size"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)))
    b = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))
    assert len(b.test) == 5 and b.test.y.tolist() == [0, 0, 1, 1, 1]
    assert len(b.train) + len(b.val) == 12
    (tmp_path / "test").rename(tmp_path / "val")  # the ImageNet layout: val/ is the held-out set
    b = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))
    assert b.class_names == ["a", "b"] and len(b.test) == 5 and len(b.train) + len(b.val) == 12
    write_pngs(tmp_path / "test", {"a": 1, "b": 1}, size=(16, 16))
    with pytest.raises(DataError, match="has train/, val/ and test/.*move val/'s class folders' images into train/"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16))


def test_a_saved_image_spec_reads_new_files_as_the_training_data(tmp_path):
    """image.json (what every image model carries): the official test files, encoded through it,
    are the bundle's test inputs, in memory (PIL, resized to the square size) and streamed
    (torchvision, shorter side and centre crop); arrays at the model's size are taken as they are."""
    from kdcore.models import create_model
    from kdcore.vision import ImageSpec, classify_images

    write_pngs(tmp_path / "train", {"a": 6, "b": 6}, size=(16, 16))
    write_pngs(tmp_path / "test", {"a": 2, "b": 3}, size=(20, 24), seed=1)
    files = sorted((tmp_path / "test").rglob("*.png"))
    for in_memory, resize in ((True, "square"), (False, "shorter_side_crop")):
        b = load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), image_size=16, in_memory=in_memory))
        spec = ImageSpec.load(b.model_files(tmp_path / f"model-{in_memory}")[0])
        assert spec.resize == resize and spec.class_names == ["a", "b"] and spec.mean == b.mean
        assert torch.equal(spec.encode(files), b.test.x[0 : len(b.test)])
        model = create_model("cnn_tiny", in_channels=3, num_classes=2).eval()
        with torch.no_grad():
            expected = model(b.test.x[0 : len(b.test)]).argmax(1)
        assert classify_images(model, spec, files) == [spec.class_names[i] for i in expected.tolist()]
    pixels = spec.pixels(files[0]).permute(1, 2, 0).numpy()  # an array of the model's size: no resizing
    assert torch.equal(spec.encode([pixels]), spec.encode(files[:1]))
    with pytest.raises(KdflowError, match=r"an image array must be uint8 \[16, 16, 3\]"):
        spec.encode([pixels[:8]])
    digits = load_dataset(DataConfig(name="digits"))
    assert digits.image_spec().to_dict()["resize"] == "square" and digits.image_spec().height == 8
    from PIL import Image

    Image.fromarray(np.full((16, 16), 7, dtype=np.uint8)).save(tmp_path / "grey.png")
    grey = ImageSpec(channels=1, height=16, width=16, mean=[0.0], std=[1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's read-only array once made torch warn here
        assert grey.pixels(tmp_path / "grey.png").shape == (1, 16, 16)


def test_imagefolder_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="needs data.root"):
        load_dataset(DataConfig(name="imagefolder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders in"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "empty")))
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="does not know colour"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path), options={"colour": 1}))
    write_pngs(tmp_path / "one", {"cat": 6})
    for in_memory in (True, False):  # read into memory or streamed: the same checks
        with pytest.raises(DataError, match=r"has 1 class \('cat'\): classification needs at least 2"):
            load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "one"), in_memory=in_memory))
        (tmp_path / "one" / "dog").mkdir(exist_ok=True)  # an empty class folder is not a class
        with pytest.raises(DataError, match="1 of its 2 classes have no training samples: 'dog'"):
            load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "one"), in_memory=in_memory))
        (tmp_path / "one" / "dog").rmdir()


# ------------------------------------------------------------------------------------------
# validation


def test_labels_out_of_range(fake_dataset):
    x = np.zeros((20, 1, 4, 4), np.uint8)
    y = np.arange(20) % 5
    cfg = fake_dataset(RawData(train_x=x, train_y=y, class_names=["a", "b", "c"], source="/fake"))
    with pytest.raises(DataError, match=r"outside \[0, 3\) for 3 classes: 3, 4"):
        load_dataset(cfg)


def test_empty_dataset(fake_dataset):
    cfg = fake_dataset(
        RawData(train_x=np.zeros((0, 1, 4, 4), np.uint8), train_y=np.zeros(0, np.int64), class_names=["a"]), name="void"
    )
    with pytest.raises(DataError, match="dataset void has no samples"):
        load_dataset(cfg)


def test_nan_values(fake_dataset):
    x = np.random.default_rng(0).random((20, 1, 4, 4)).astype(np.float32)
    x[7, 0, 1, 2] = np.nan
    cfg = fake_dataset(RawData(train_x=x, train_y=np.arange(20) % 2, class_names=["a", "b"], scale=1.0))
    with pytest.raises(DataError, match="1 NaN values .first in sample 7"):
        load_dataset(cfg)


def test_float_data_and_too_few_samples(fake_dataset):
    x = np.random.default_rng(0).random((30, 2, 4, 4)).astype(np.float32)
    b = load_dataset(
        fake_dataset(RawData(train_x=x, train_y=np.arange(30) % 3, class_names=["a", "b", "c"], scale=1.0))
    )
    assert b.in_channels == 2 and sum(sizes(b).values()) == 30
    cfg = fake_dataset(RawData(train_x=x[:2], train_y=np.arange(2), class_names=["a", "b"]), name="two")
    with pytest.raises(DataError, match=r"only 1 sample\(s\): too few to carve a val split"):
        load_dataset(cfg)
