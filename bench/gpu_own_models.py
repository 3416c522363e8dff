"""Your own models on streamed image files, at GPU size: a torchvision ResNet-50 teacher distilled
into a MobileNetV3-Large student at 224 px, kdflow against a bare PyTorch loop on the same data.

1. Writes a generated image folder (``train/<class>/*.jpg`` and ``test/<class>/*.jpg``: six texture
   classes -- rows, columns, checks, rings, dots, cross-hatch -- at random period, phase and colour
   with noise; each class looks the same mirrored, so the horizontal flip keeps labels right).
2. ``teacher``: trains ``torchvision.models.resnet50`` from scratch on it with a plain loop and
   saves a plain ``state_dict`` (``teacher.pt``): the user's own teacher from elsewhere.
3. ``bare``: a bare PyTorch KD loop -- torchvision ``ImageFolder`` read with ``decode_image``,
   ``transforms.v2`` (RandomResizedCrop + flip, normalise), a ``DataLoader`` with ``--workers``
   persistent workers and pinned memory -- the teacher online into ``mobilenet_v3_large``. It does
   the arithmetic kdflow does: student under bf16 autocast on CUDA (``trainer.amp: auto``), the
   teacher in float32 (kdflow runs teachers without autocast), KD 0.9 at T=4 + CE 0.1, SGD with
   Nesterov momentum and a cosine schedule, cudnn settings left at PyTorch's defaults.
4. ``kdflow-cached`` / ``kdflow-online``: ``flows.runner.run_pipeline`` (Prefect ephemeral, MLflow in a
   fresh KDFLOW_HOME shared by both) with the same models and data streamed
   (``data.in_memory: false``, ``data.num_workers``), ``teacher.checkpoint: teacher.pt``,
   ``trainer.deterministic: false``, once with ``cache.mode: cached`` (the features stage runs the
   teacher once over the split) and once ``online``.

Each part runs in its own process. Images/s is the same figure for every row: training samples of
the last epoch (the first is warm-up when ``--epochs`` >= 2) over that epoch's training pass, from
the first batch requested to the last step done, validation excluded -- kdcore's ``samples_per_s``
(kdcore.train.loop), read from the distill run's MLflow metrics. "epoch s" adds the per-epoch
validation pass (the pipeline's ``epoch_seconds``; the bare loop evaluates its test split each
epoch). Top-1 is on the test folder. Target (issue 11): kdflow >= 0.9x the bare loop's images/s.

    python bench/gpu_own_models.py --device cuda                       # the GPU case of bench/gpu.sh
    python bench/gpu_own_models.py --device cpu --images 64 --image-size 64 --epochs 1 \\
        --batch-size 16 --workers 1                                    # a smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ("rows", "columns", "checks", "rings", "dots", "crosshatch")
TEACHER, STUDENT = "resnet50", "mobilenet_v3_large"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the bare loop's (ImageNet) statistics
TEMPERATURE, KD_WEIGHT, CE_WEIGHT = 4.0, 0.9, 0.1
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
VARIANTS = ("bare", "kdflow-cached", "kdflow-online")


# -- the image folder -----------------------------------------------------------------------------


def _texture(kind: str, side: int, rng):
    """A boolean [side, side] mask of one class's texture at a random period and phase."""
    import numpy as np

    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    period = rng.uniform(side / 14, side / 5)
    py, px = rng.uniform(0, period, size=2)
    if kind == "rows":
        return (yy + py) % period < period / 2
    if kind == "columns":
        return (xx + px) % period < period / 2
    if kind == "checks":
        return (((xx + px) // (period / 2)) + ((yy + py) // (period / 2))) % 2 == 0
    if kind == "rings":
        cy, cx = rng.uniform(0.3 * side, 0.7 * side, size=2)
        return np.hypot(yy - cy, xx - cx) % period < period / 2
    if kind == "dots":
        dy, dx = (yy + py) % period - period / 2, (xx + px) % period - period / 2
        return np.hypot(dy, dx) < period / 4
    # crosshatch: both diagonals, so that a mirrored image is still this class
    return ((xx + yy + px) % period < period / 4) | ((xx - yy + side + py) % period < period / 4)


def _write_images(job: tuple[str, int, int, int, str]) -> None:
    """Worker of :func:`make_image_folder`: one image ``job = (path, class index, side, seed, fmt)``."""
    import numpy as np
    from PIL import Image

    path, label, side, seed, fmt = job
    rng = np.random.default_rng(seed)
    mask = _texture(CLASSES[label], side, rng)[..., None]
    fg, bg = rng.uniform(120, 255, size=3), rng.uniform(0, 110, size=3)
    img = np.where(mask, fg, bg) + rng.normal(0, 20, (side, side, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, **({"quality": 90} if fmt == "jpg" else {}))


def make_image_folder(root: Path, images: int, side: int, fmt: str = "jpg", workers: int = 1) -> dict[str, int]:
    """``root/{train,test}/<class>/*.<fmt>``: ``images`` images in all, one eighth of them test,
    classes balanced, written by ``workers`` processes. Returns the count per split."""
    from multiprocessing import get_context

    n_test = max(len(CLASSES), images // 8)
    jobs, counts = [], {}
    for split, n in (("train", images - n_test), ("test", n_test)):
        counts[split] = n
        for c in CLASSES:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = i % len(CLASSES)
            seed = (0 if split == "train" else 1_000_003) + i
            jobs.append((str(root / split / CLASSES[label] / f"{i:06d}.{fmt}"), label, side, seed, fmt))
    if workers > 1:
        with get_context("fork").Pool(workers) as pool:
            pool.map(_write_images, jobs, chunksize=64)
    else:
        for job in jobs:
            _write_images(job)
    return counts


# -- the bare PyTorch parts -----------------------------------------------------------------------


def _loaders(folder: Path, size: int, batch: int, workers: int, cuda: bool):
    """torchvision ImageFolder + decode_image + transforms.v2, as a user would write them."""
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    def read(path: str):
        return decode_image(path, mode=ImageReadMode.RGB)

    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    train_tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), *norm])
    test_tf = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *norm])
    common = dict(num_workers=workers, pin_memory=cuda)
    if workers:
        common.update(persistent_workers=True, prefetch_factor=4)
    train = DataLoader(
        ImageFolder(str(folder / "train"), transform=train_tf, loader=read),
        batch_size=batch,
        shuffle=True,
        drop_last=False,
        **common,
    )
    test = DataLoader(ImageFolder(str(folder / "test"), transform=test_tf, loader=read), batch_size=batch, **common)
    return train, test


def _amp(device):
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(device, amp):
    """Autocast to ``amp`` (None: full precision, no autocast block at all)."""
    import contextlib

    import torch

    return contextlib.nullcontext() if amp is None else torch.autocast(device.type, dtype=amp)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _top1(model, loader, device, amp) -> float:
    import torch

    model.eval()
    correct = total = 0
    with torch.inference_mode(), _autocast(device, amp):
        for x, y in loader:
            pred = model(x.to(device, non_blocking=True)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
    return correct / max(total, 1)


def bare_teacher(args) -> dict:
    """Train the ResNet-50 teacher with a plain loop; save a plain state_dict."""
    import torch
    import torch.nn.functional as F
    import torchvision

    device = torch.device(args.device)
    torch.manual_seed(0)
    train, test = _loaders(args.folder, args.image_size, args.batch_size, args.workers, device.type == "cuda")
    model = torchvision.models.get_model(TEACHER, weights=None, num_classes=len(CLASSES)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    amp = _amp(device)
    t0 = time.perf_counter()
    for _ in range(args.teacher_epochs):
        model.train()
        for x, y in train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                loss = F.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    seconds = time.perf_counter() - t0
    top1 = _top1(model, test, device, amp)
    torch.save(model.state_dict(), args.work / "teacher.pt")
    return {"seconds": seconds, "top1": top1}


def bare_kd(args) -> dict:
    """The bare KD loop: teacher online (float32), student under autocast; images/s per epoch."""
    import torch
    import torch.nn.functional as F
    import torchvision

    device = torch.device(args.device)
    torch.manual_seed(0)
    train, test = _loaders(args.folder, args.image_size, args.batch_size, args.workers, device.type == "cuda")
    teacher = torchvision.models.get_model(TEACHER, weights=None, num_classes=len(CLASSES))
    teacher.load_state_dict(torch.load(args.work / "teacher.pt", weights_only=True))
    teacher = teacher.to(device).eval()
    student = torchvision.models.get_model(STUDENT, weights=None, num_classes=len(CLASSES)).to(device)
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    amp = _amp(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    t = TEMPERATURE
    history = []
    for _ in range(args.epochs):
        student.train()
        running = torch.zeros((), device=device)
        n = 0
        e0 = time.perf_counter()
        for x, y in train:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():  # outside autocast: float32
                t_logits = teacher(x)
            with _autocast(device, amp):
                s_logits = student(x).float()
            kd = F.kl_div(
                F.log_softmax(s_logits / t, dim=-1), F.softmax(t_logits.float() / t, dim=-1), reduction="batchmean"
            )
            loss = KD_WEIGHT * kd * t * t + CE_WEIGHT * F.cross_entropy(s_logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            running += loss.detach() * len(y)
            n += len(y)
        sched.step()
        float(running)  # one host sync per epoch, as kdcore does
        train_s = time.perf_counter() - e0
        top1 = _top1(student, test, device, amp)
        history.append({"samples_per_s": n / train_s, "epoch_seconds": time.perf_counter() - e0, "top1": top1})
    return {"history": history, "top1": history[-1]["top1"]}


# -- the pipeline ---------------------------------------------------------------------------------


def pipeline_config(args, mode: str) -> dict:
    train = {"max_epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "sgd", "lr": LR}
    train.update(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, scheduler="cosine")
    return {
        "name": "gpu-own-models",
        "data": {
            "name": "imagefolder",
            "root": str(args.folder),
            "image_size": args.image_size,
            "in_memory": False,
            "num_workers": args.workers,
        },
        "teacher": {
            "arch": f"torchvision:{TEACHER}",
            "kwargs": {"weights": None},
            "checkpoint": str(args.work / "teacher.pt"),
        },
        "student": {"arch": f"torchvision:{STUDENT}", "kwargs": {"weights": None}},
        "cache": {"mode": mode},
        "distill": {
            "temperature": TEMPERATURE,
            "losses": {"kd": {"weight": KD_WEIGHT}, "ce": {"weight": CE_WEIGHT}},
            "train": train,
        },
        "baseline": {"enabled": False},
        "evaluate": {"batch_size": args.batch_size, "latency": False, "min_run_time": 0.01, "throughput_batch": 8},
        "register": {"enabled": False},
        "export": {"format": "none"},
        "trainer": {"device": args.device, "deterministic": False},
    }


def kdflow_run(args, mode: str) -> dict:
    """``run_pipeline`` with ``cache.mode: mode``; the distill stage's per-epoch MLflow metrics."""
    sys.path.insert(0, str(ROOT))
    from mlflow import MlflowClient

    from flows.runner import run_pipeline
    from kdcore.config import config_from_dict

    t0 = time.perf_counter()
    report = run_pipeline(config_from_dict(pipeline_config(args, mode)))
    wall = time.perf_counter() - t0
    client = MlflowClient(report["tracking_uri"])
    run_id = report["stages"]["distill"]["mlflow_run_id"]

    def series(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]

    sps, eps = series("samples_per_s"), series("epoch_seconds")
    features = report["stages"].get("features")
    return {
        "history": [{"samples_per_s": a, "epoch_seconds": b} for a, b in zip(sps, eps)],
        "top1": report["models"]["student"]["top1"],
        "teacher_top1": report["models"]["teacher"]["top1"],
        "cache_seconds": features["seconds"] if features and not features["cached"] else None,
        "stage_seconds": {s: round(i["seconds"], 1) for s, i in report["stages"].items()},
        "wall_seconds": wall,
    }


# -- driver ---------------------------------------------------------------------------------------


def child(part: str, args, env: dict) -> dict:
    """Run one part in a fresh process; its result is the last line of its stdout (JSON)."""
    cmd = [sys.executable, __file__, "--part", part, "--folder", str(args.folder), "--work", str(args.work)]
    for opt in ("device", "image_size", "epochs", "teacher_epochs", "batch_size", "workers"):
        cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"{part} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}", file=sys.stderr, flush=True)
        return {"error": f"exit {proc.returncode}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - t0
    return out


def last_epoch(res: dict) -> dict:
    return res["history"][-1] if res.get("history") else {}


def table(results: dict) -> str:
    bare = last_epoch(results.get("bare", {})).get("samples_per_s")
    lines = [
        f"{'variant':15s} {'images/s':>9s} {'vs bare':>8s} {'epoch s':>8s} {'top-1':>6s} {'cache build s':>14s}",
    ]
    for name, res in results.items():
        if "error" in res:
            lines.append(f"{name:15s} failed ({res['error']})")
            continue
        e = last_epoch(res)
        ips = e.get("samples_per_s", math.nan)
        ratio = f"{ips / bare:.2f}x" if bare else "-"
        cache = f"{res['cache_seconds']:.1f}" if res.get("cache_seconds") is not None else "-"
        lines.append(
            f"{name:15s} {ips:9.1f} {ratio:>8s} {e.get('epoch_seconds', math.nan):8.2f} {res['top1']:6.3f} {cache:>14s}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--images", type=int, default=8000, help="images written in all (one eighth test)")
    p.add_argument("--image-size", type=int, default=224, help="side the models see (files are 8/7 of it)")
    p.add_argument("--epochs", type=int, default=2, help="distillation epochs (the last one is measured)")
    p.add_argument("--teacher-epochs", type=int, default=2, help="epochs of the bare teacher training")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=max(1, min(15, (os.cpu_count() or 2) - 1)))
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image file format")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--out", type=Path, help="keep the images, teacher and KDFLOW_HOME here (default: a temp dir)")
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.part:
        fn = {
            "teacher": bare_teacher,
            "bare": bare_kd,
            "kdflow-cached": lambda a: kdflow_run(a, "cached"),
            "kdflow-online": lambda a: kdflow_run(a, "online"),
        }[args.part]
        print(json.dumps(fn(args)))
        return

    if args.epochs < 2:
        print("note: --epochs 1 measures the first epoch (worker start-up and cudnn warm-up included)")
    out = args.out or Path(tempfile.mkdtemp(prefix="kdflow-gpu-own-"))
    shutil.rmtree(out / "images", ignore_errors=True)
    args.folder, args.work = out / "images", out / "work"
    args.work.mkdir(parents=True, exist_ok=True)
    side = round(args.image_size * 8 / 7)
    t0 = time.perf_counter()
    counts = make_image_folder(args.folder, args.images, side, args.format, workers=min(16, os.cpu_count() or 1))
    print(
        f"{counts['train']} train + {counts['test']} test images, {side}-px {args.format}, {len(CLASSES)} classes, "
        f"written in {time.perf_counter() - t0:.1f} s to {args.folder}",
        flush=True,
    )
    home = out / "kdflow-home"
    shutil.rmtree(home, ignore_errors=True)
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "KDFLOW_HOME": str(home),
        "KDFLOW_PREFECT": "ephemeral",
        "PYTHONUNBUFFERED": "1",
    }
    teacher = child("teacher", args, env)
    if "error" in teacher:
        sys.exit(1)
    print(
        f"teacher {TEACHER}: {args.teacher_epochs} epochs (bare loop) in {teacher['seconds']:.1f} s, "
        f"test top-1 {teacher['top1']:.3f}; saved as a plain state_dict",
        flush=True,
    )
    results: dict[str, dict] = {}
    for variant in args.variants:
        results[variant] = res = child(variant, args, env)
        if "error" not in res:
            ips = last_epoch(res).get("samples_per_s", math.nan)
            bare = last_epoch(results.get("bare", {})).get("samples_per_s")
            ratio = f" ({ips / bare:.2f}x bare)" if bare and variant != "bare" else ""
            extra = f", stage seconds {res['stage_seconds']}" if "stage_seconds" in res else ""
            print(f"{variant}: {ips:.1f} images/s{ratio}, process {res['process_seconds']:.1f} s{extra}", flush=True)
    print(
        f"\n{TEACHER} -> {STUDENT}, {args.image_size} px, streamed with {args.workers} workers, "
        f"batch {args.batch_size}, epoch {args.epochs} of {args.epochs} measured, device {args.device}"
    )
    print(table(results))
    ok = [r for n, r in results.items() if n != "bare" and "error" not in r]
    bare = last_epoch(results.get("bare", {})).get("samples_per_s")
    if bare and ok:
        worst = min(last_epoch(r)["samples_per_s"] for r in ok) / bare
        print(f"lowest kdflow/bare images/s: {worst:.2f}x (target >= 0.9x)")
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
