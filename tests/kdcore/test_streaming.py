"""Image files streamed from disk (data.in_memory: false): loaders, cache replay, the pipeline."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from images import write_image_folder

from conftest import TINY, kdflow_home
from kdcore.config import DataConfig, config_from_dict
from kdcore.data import load_dataset
from kdcore.data.stream import ImageFileSplit
from kdcore.evaluate import predict
from kdcore.models import create_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "imgs")


def data_cfg(folder, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(folder), image_size=32, **kw)


def test_in_memory_by_default_streamed_when_asked_or_over_budget(folder):
    assert not isinstance(load_dataset(data_cfg(folder)).train, ImageFileSplit)  # small: in memory
    assert isinstance(load_dataset(data_cfg(folder, in_memory=False)).train, ImageFileSplit)
    over = load_dataset(data_cfg(folder, memory_budget="100KB"))  # 90 x 3 x 32 x 32 x 4 B = 1.1 MB
    assert isinstance(over.train, ImageFileSplit)


def test_streamed_evaluation_equals_in_memory(folder):
    mem = load_dataset(data_cfg(folder))
    streamed = load_dataset(data_cfg(folder, in_memory=False, num_workers=2))
    assert streamed.mean == mem.mean and streamed.std == mem.std  # statistics of the whole (small) train split
    assert [len(s) for s in streamed.splits().values()] == [len(s) for s in mem.splits().values()]
    assert torch.equal(streamed.test.y, mem.test.y)
    torch.manual_seed(0)
    model = create_model("cnn_tiny", in_channels=3, num_classes=3).eval()
    a = predict(model, mem.test.x, batch_size=7)
    b = predict(model, streamed.test.x, batch_size=7)  # a DataLoader with 2 workers decodes the files
    assert torch.equal(a, b)


def test_workers_ship_uint8_batches_that_normalise_to_the_items_values(folder):
    """A loader batch (``__getitems__``: uint8, a quarter of the bytes) normalised on arrival equals,
    bit for bit, the stacked single items (float, normalised in the worker)."""
    from kdcore.train.batches import LoaderBatches

    data = load_dataset(data_cfg(folder, in_memory=False, num_workers=1, augment={"scale": [0.5, 1.0]}))
    ds = data.train.dataset()
    items = [(i, 1000 + i) for i in range(12)] + [3, 5]  # train views drawn from seeds, and eval views
    raw = ds.__getitems__(items)
    assert raw["x"].dtype == torch.uint8 and raw["x"].shape == (14, 3, 32, 32)
    singles = [ds[item] for item in items]
    assert torch.equal(ds.to_input(raw["x"]), torch.stack([s["x"] for s in singles]))
    assert torch.equal(raw["crop"], torch.stack([s["crop"] for s in singles]))
    assert torch.equal(raw["y"], torch.stack([s["y"] for s in singles]))
    # through a DataLoader worker process, as a training epoch reads it
    source = LoaderBatches(
        ds, len(ds), torch.device("cpu"), num_workers=1, items=lambda e, idx: [(i, 7 * i + e) for i in idx.tolist()]
    )
    batch = next(iter(source.epoch(0, 0, 8)))
    assert batch.x.dtype == torch.float32
    expected = torch.stack([ds[(int(i), 7 * int(i))]["x"] for i in batch.idx])
    assert torch.equal(batch.x, expected)


def test_streamed_views_need_no_policy_and_ignore_the_in_memory_one(folder):
    """Streamed views are data.augment's crops: cache.views.policy is not asked for and, as the
    stages get the config (tasks.data.for_data), editing it changes no stage fingerprint; in
    memory, views without a policy or a mix would all be the same image and are refused."""
    from kdcore.config import PipelineConfig
    from kdcore.errors import ConfigError
    from kdcore.preflight import preflight_data
    from tasks.data import for_data
    from tasks.fingerprints import fingerprint

    def cfg(in_memory: bool, **views) -> PipelineConfig:
        return PipelineConfig.model_validate(
            {"data": data_cfg(folder, in_memory=in_memory).model_dump(), "cache": {"views": {"num_views": 2, **views}}}
        )

    def features_fp(c: PipelineConfig, data) -> str:
        return fingerprint("features", for_data(c, data), data.fingerprint, {"teacher": {"fingerprint": "t"}})

    streamed = load_dataset(data_cfg(folder, in_memory=False))
    preflight_data(cfg(False), streamed)  # num_views 2 without a policy: fine when streamed
    assert features_fp(cfg(False), streamed) == features_fp(cfg(False, policy="crop_flip", pad=4), streamed)
    assert features_fp(cfg(False), streamed) != features_fp(cfg(False, seed=1), streamed)
    mem = load_dataset(data_cfg(folder))
    with pytest.raises(ConfigError, match="num_views = 2 but every view would be the same image"):
        preflight_data(cfg(True), mem)
    assert features_fp(cfg(True, policy="crop_flip"), mem) != features_fp(cfg(True, policy="shift"), mem)


def test_fingerprint_follows_file_stats_or_contents(folder, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(folder, root)

    def fp(**kw) -> str:  # no loader workers: the statistics they would compute are not under test
        return load_dataset(data_cfg(root, in_memory=False, num_workers=0, **kw)).fingerprint

    stat, content = fp(), fp(fingerprint="content")
    f = next((root / "c0").glob("*.png"))
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))  # touched, same bytes
    assert fp() != stat
    assert fp(fingerprint="content") == content
    f.write_bytes((root / "c1" / "0.png").read_bytes())  # other bytes
    assert fp(fingerprint="content") != content


def test_cache_replays_the_crops_the_teacher_saw(folder, tmp_path):
    """Per sample and view: the student loader's view (replayed from the stored crop) equals the
    image the teacher was run on when the cache was built, and the cached logits equal the teacher
    on that view."""
    from kdcore.stages import StageEnv, TeacherSource, build_features
    from kdcore.train import TrainCallbacks

    cfg = config_from_dict(
        {
            **copy.deepcopy(TINY),
            "data": {
                "name": "imagefolder",
                "root": str(folder),
                "image_size": 24,
                "in_memory": False,
                "num_workers": 2,
            },
            "cache": {"views": {"policy": "crop_flip", "num_views": 3, "seed": 5}},
        }
    )
    data = load_dataset(cfg.data)

    class Progress(TrainCallbacks):
        calls: list = []

        def on_progress(self, what, done, total):
            self.calls.append((what, done, total))

    env = StageEnv(cfg, data, tmp_path / "work", Progress())
    teacher = env.build("cnn_small", {}, seed_offset=0).eval()
    seen: list[torch.Tensor] = []
    hook = teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    entries = {
        s: e for s, (e, built) in build_features(env, teacher, "t" * 64, tmp_path / "cache", batch_size=16).items()
    }
    hook.remove()
    total = len(data.train) + len(data.val)
    assert Progress.calls[-1] == ("cache", total, total)  # the build reported its progress batch by batch
    assert len(Progress.calls) > 2 and [c[1] for c in Progress.calls] == sorted(c[1] for c in Progress.calls)
    n, views = len(data.train), 3
    # the build ran chunk by chunk, each chunk once per view: put the teacher's inputs back in (sample, view) order
    chunks = [seen[k * views : (k + 1) * views] for k in range(-(-n // 16))]
    teacher_saw = torch.cat([torch.stack(c, dim=1) for c in chunks])[:n]  # [N, V, C, H, W]
    entry = entries["train"]
    crops = TeacherSource(env, entries, None, []).crops("train")
    assert crops.shape == (n, views, 5)
    assert len({tuple(c) for c in crops.reshape(-1, 5).tolist()}) > n  # views differ
    logits = entry.read_all("logits")
    ds = data.train.dataset()
    for i in range(n):
        for v in range(views):
            replayed = ds[(i, crops[i, v].tolist())]["x"]
            assert torch.equal(replayed, teacher_saw[i, v]), (i, v)
            with torch.no_grad():
                expected = teacher(replayed[None]).float()[0]
            torch.testing.assert_close(logits[i, v], expected, rtol=0, atol=1e-5)


def test_streaming_pipeline_trains_evaluates_registers(prefect_server, folder, tmp_path):
    from mlflow import MlflowClient

    from flows.runner import run_pipeline

    raw = copy.deepcopy(TINY)
    raw["data"] = {
        "name": "imagefolder",
        "root": str(folder),
        "image_size": 32,
        "in_memory": False,
        "num_workers": 2,
        "augment": {"scale": [0.6, 1.0]},
    }
    raw["teacher"]["train"]["max_epochs"] = 3
    raw["cache"] = {"views": {"policy": "crop_flip", "num_views": 2}, "dtype": "float16", "topk": 2}
    raw["register"] = {"teacher_name": "stream-teacher", "student_name": "stream-student"}
    home = tmp_path / "home"
    with kdflow_home(home):
        report = run_pipeline(config_from_dict(raw))
    stages = report["stages"]
    assert {"teacher", "features", "distill", "baseline", "evaluate", "register"} <= set(stages)
    evaluated = report["evaluate"] if "evaluate" in report else stages["evaluate"]
    assert evaluated
    crops = [np.load(p) for p in (home / "cache").glob("*/view_crops.npy")]
    assert crops and crops[0].shape[1:] == (2, 5)  # the train entry stored its crops
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert client.search_model_versions("name='stream-student'")
    assert client.search_model_versions("name='stream-teacher'")

    # the registered student reads new picture files through the image.json stored with it: on the
    # test split's files it scores what the evaluate stage measured
    import mlflow

    from kdcore.vision import ImageSpec, classify_images
    from tasks.tracking import process_uri

    version = report["registered"]["stream-student"]
    with process_uri(f"sqlite:///{home / 'mlflow.db'}"):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/stream-student/{version}", dst_path=str(tmp_path)))
        registered = mlflow.pytorch.load_model(str(local))
    spec = ImageSpec.load(local / "extra_files" / "image.json")
    test = load_dataset(config_from_dict(raw).data).test
    assert spec.resize == "shorter_side_crop" and (spec.height, spec.width) == (32, 32)
    assert torch.equal(spec.encode(test.paths[:5]), test.x[0:5])
    names = classify_images(registered, spec, test.paths)
    top1 = np.mean([n == spec.class_names[int(y)] for n, y in zip(names, test.y)])
    assert top1 == pytest.approx(report["models"]["student"]["top1"], abs=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_resized_crop_gives_torchvisions_pixels(channels):
    """kdcore's crop (one interpolate call) equals torchvision.transforms.v2's resized_crop, bit for
    bit, shrinking and enlarging, square and not, at the output size itself."""
    from torchvision.transforms.v2 import functional as F

    from kdcore.data.stream import resized_crop

    g = torch.Generator().manual_seed(channels)
    for height, width, size in [(64, 64, 64), (40, 56, 32), (97, 75, 48), (20, 24, 32)]:
        img = torch.randint(0, 256, (channels, height, width), dtype=torch.uint8, generator=g)
        for _ in range(25):
            h = int(torch.randint(1, height + 1, (1,), generator=g))
            w = int(torch.randint(1, width + 1, (1,), generator=g))
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            expected = F.resized_crop(img, top, left, h, w, [size, size], antialias=True)
            assert torch.equal(resized_crop(img, top, left, h, w, size), expected), (height, width, size, h, w)
        if size <= min(height, width):  # a cut of the output size is the cut itself
            assert torch.equal(resized_crop(img, 0, 0, size, size, size), img[:, :size, :size])


def test_forward_batches_shrink_with_the_image_size_and_on_the_cpu():
    from kdcore.train.device import forward_batch_size

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert forward_batch_size(gpu, (1, 28, 28)) == 512 and forward_batch_size(gpu, (3, 32, 32)) == 512
    assert forward_batch_size(gpu, (3, 64, 64)) == 128  # the same pixels per batch as 512 x 32 x 32
    assert forward_batch_size(gpu, (3, 224, 224)) == 32  # never below 32
    assert forward_batch_size(gpu, (40, 12)) == 512  # sequences: not images
    assert forward_batch_size(gpu, (1, 28, 28), accelerator=1024) == 1024
    assert forward_batch_size(cpu, (1, 28, 28), accelerator=1024) == 128  # the CPU's caches, whatever the device's
    assert forward_batch_size(cpu, (3, 64, 64)) == 32 and forward_batch_size(cpu, (3, 224, 224)) == 32
    assert forward_batch_size(cpu, (40, 12)) == 512  # sequences keep larger batches on the CPU too


class ChannelVote(torch.nn.Module):
    """Class scores from the images' mean channel values: class ``order[c]`` for a dark channel c."""

    def __init__(self, order: list[int]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(-torch.eye(3)[order])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) @ self.weight


@pytest.mark.parametrize("fit_samples", [0, 40, 10_000])
def test_evaluate_measures_fit_on_a_training_sample_streamed_or_in_memory(folder, tmp_path, fit_samples):
    """evaluate's ``train_top1`` / ``train_agreement`` are the models' answers on a fixed sample of
    the training split (all of it when asked for more), the same whether the split is streamed or in
    memory; the teacher, the reference, has no agreement of its own; 0 measures nothing."""
    from kdcore.stages import StageEnv
    from kdcore.stages.evaluate import evaluate_models, fit_sample

    # the folder's class k has its channel k darkened: the teacher names the darkest channel (right on
    # every image), the student swaps classes 1 and 2 (right, and in agreement, on class 0 alone)
    models = {"teacher": ChannelVote([0, 1, 2]), "student": ChannelVote([0, 2, 1])}
    reports = []
    for in_memory in (True, False):
        raw = copy.deepcopy(TINY)
        raw["data"] = {"name": "imagefolder", "root": str(folder), "image_size": 32, "in_memory": in_memory}
        raw["evaluate"] = {"fit_samples": fit_samples, "batch_size": 16, "latency": False, "throughput_batch": 8}
        cfg = config_from_dict(raw)
        data = load_dataset(cfg.data)
        reports.append(evaluate_models(StageEnv(cfg, data, tmp_path / str(in_memory)), models))
    mem, streamed = ({name: r[name]["metrics"] for name in models} for r in reports)
    if fit_samples == 0:
        assert not any(k.startswith("train_") for m in mem.values() for k in m)
        return
    data = load_dataset(DataConfig(name="imagefolder", root=str(folder), image_size=32))
    rows = fit_sample(len(data.train), fit_samples)
    assert len(rows) == min(fit_samples, len(data.train)) and len(set(rows.tolist())) == len(rows)
    top = {name: predict(m, data.train.x[rows]).argmax(1) for name, m in models.items()}
    for metrics in (mem, streamed):
        assert metrics["teacher"]["train_top1"] == pytest.approx((top["teacher"] == data.train.y[rows]).float().mean())
        assert metrics["student"]["train_top1"] == pytest.approx((top["student"] == data.train.y[rows]).float().mean())
        agreement = (top["student"] == top["teacher"]).float().mean()
        assert metrics["student"]["train_agreement"] == pytest.approx(agreement)
        assert metrics["teacher"]["train_top1"] == 1.0 and 0.2 < agreement < 0.5  # class 0: a third of them
        assert "train_agreement" not in metrics["teacher"]


WORKER_SERVER = """
import json, os, sys, threading
from multiprocessing import forkserver
import torch
from flows.pipeline import warm_loader_workers
from kdcore.config import DataConfig
from kdcore.data import load_dataset
from kdcore.train.batches import make_loader

def server():
    pid = forkserver._forkserver._forkserver_pid
    return pid, pid is not None and os.waitpid(pid, os.WNOHANG) == (0, 0)

in_memory, streamed = (DataConfig.model_validate(section) for section in json.loads(sys.argv[1]))
warm_loader_workers(load_dataset(in_memory))  # first, and no loader after it: one would start a server
print(json.dumps({"early": server()[1]}))
warm_loader_workers(load_dataset(streamed))
pid, alive = server()
stop = threading.Event()  # then, as in a Prefect flow's task, a loader beside other threads
threading.Thread(target=stop.wait, daemon=True).start()
batches = [b.tolist() for b in make_loader(list(range(6)), [[0, 1], [2, 3, 4]], 1, torch.device("cpu"))]
stop.set()
print(json.dumps({"early": alive, "same": alive and server()[0] == pid, "batches": batches}))
"""


def test_pipeline_starts_the_loader_workers_server_early_for_streamed_data(folder):
    """Streamed data: the pipeline starts the DataLoader workers' forkserver as soon as the data is
    loaded (its imports take seconds), and the stages' loaders later fork their workers from that
    server. Data held in memory has no workers to start: no server. Both in one process, the data in
    memory first (a process apiece cost the suite ~15 s of a core in imports)."""
    sections = [
        {"name": "imagefolder", "root": str(folder), "image_size": 32, "in_memory": in_memory, "num_workers": 1}
        for in_memory in (True, False)
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-c", WORKER_SERVER, json.dumps(sections)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    in_memory, streamed = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    assert in_memory["early"] is False, "no server for data held in memory"
    assert streamed["batches"] == [[0, 1], [2, 3, 4]]
    assert streamed["early"] is True and streamed["same"] is True, streamed


def test_16_bit_and_bmp_images_read_as_their_8_bit_pixels_in_memory_and_streamed(tmp_path):
    """A 16-bit grey PNG counts by its high byte (PIL alone would clip it to white, the decoded store
    would take it for 8-bit bytes), and a BMP, which torchvision does not decode, streams through PIL:
    every way of reading gives the pixels of the same image saved as 8-bit PNG."""
    from PIL import Image

    from kdcore.data.imagefolder import pil_pixels
    from kdcore.data.stream import decode

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "eight.png")
    Image.fromarray(grey.astype(np.uint16) * 256 + 3).save(tmp_path / "sixteen.png")  # low byte: noise
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    Image.fromarray(rgb).save(tmp_path / "colour.bmp")
    for name, mode in (("sixteen.png", "L"), ("sixteen.png", "RGB")):
        assert np.array_equal(pil_pixels(tmp_path / name, mode), pil_pixels(tmp_path / "eight.png", mode))
    for grey in (True, False):
        assert torch.equal(decode(str(tmp_path / "sixteen.png"), grey), decode(str(tmp_path / "eight.png"), grey))
    # (grey from colour: libpng's weights where torchvision decodes, PIL's for a BMP, 1 level apart at most)
    assert torch.equal(decode(str(tmp_path / "colour.bmp"), False), decode(str(tmp_path / "colour.png"), False))
    bmp_grey, png_grey = (decode(str(tmp_path / f"colour.{ext}"), True).int() for ext in ("bmp", "png"))
    assert (bmp_grey - png_grey).abs().max() <= 1
    assert decode(str(tmp_path / "sixteen.png"), False).dtype == torch.uint8

    # whole folders: one image of each class 16-bit (and one BMP) reads as the all-8-bit folder does
    clean, odd = write_image_folder(tmp_path / "clean", per_class=8), tmp_path / "odd"
    import shutil

    shutil.copytree(clean, odd)
    first = np.asarray(Image.open(clean / "c0" / "0.png").convert("L"))
    (odd / "c0" / "0.png").unlink()
    Image.fromarray(first.astype(np.uint16) * 257).save(odd / "c0" / "0.png")
    (clean / "c0" / "0.png").unlink()
    Image.fromarray(first).convert("RGB").save(clean / "c0" / "0.png")
    (odd / "c1" / "1.png").unlink()
    Image.open(clean / "c1" / "1.png").save(odd / "c1" / "1.bmp")
    (clean / "c1" / "1.png").rename(clean / "c1" / "1.bmp.png")  # the same place in the sorted listing
    streamed = {"in_memory": False, "num_workers": 0}
    for kw in ({}, streamed, {**streamed, "decoded_store": False}):
        a, b = (load_dataset(data_cfg(root, decoded_store_dir=str(tmp_path / "stores"), **kw)) for root in (clean, odd))
        assert a.mean == pytest.approx(b.mean, rel=1e-12) and a.std == pytest.approx(b.std, rel=1e-12)
        assert torch.equal(a.train.x[: len(a.train)], b.train.x[: len(b.train)])


def test_a_file_that_breaks_in_a_loader_worker_fails_with_its_own_one_line_message(tmp_path):
    """A test image that only a worker reads (no decoded store): the DataError that reaches the stage
    says which file and why, without the worker's traceback that torch wraps around it."""
    from kdcore.errors import DataError
    from kdcore.evaluate import predict

    root = write_image_folder(tmp_path / "imgs", per_class=10)
    data = load_dataset(data_cfg(root, in_memory=False, num_workers=1, decoded_store=False))
    bad = Path(data.test.paths[3])
    bad.write_bytes(b"not an image at all")
    model = create_model("cnn_tiny", in_channels=3, num_classes=3).eval()
    with pytest.raises(DataError) as info:
        predict(model, data.test.x, batch_size=4)
    assert str(info.value).startswith(f"cannot read image {bad}: Unsupported image file.")
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
