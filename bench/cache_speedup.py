"""What the teacher cache buys: a distillation epoch with the teacher online vs from the cache.

On Fashion-MNIST (Debian's dataset-fashion-mnist) with a teacher of >= 10x the student's FLOPs,
in one run it measures
  (a) a distillation epoch (train part) with the teacher run online,
  (b) the same epoch with the teacher's outputs read from the cache,
  (c) the teacher's forward time over the epoch's images alone, and the student's train steps
      alone (teacher outputs already in memory, no cache reads),
and prints the measured speed-up a/b beside the bound (student + teacher forward) / student, the
cache build time, the break-even number of epochs, the cache size on disk and the peak RSS of a
separate process that builds the cache. Epoch times are medians over --epochs epochs.

The teacher is randomly initialised (timing does not depend on its weights) unless --teacher
points at a checkpoint written by kdflow.

Usage: .venv/bin/python bench/cache_speedup.py [--limit-train 20000] [--epochs 3] [--views 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kdcore.cache import open_entry  # noqa: E402
from kdcore.config import config_from_dict  # noqa: E402
from kdcore.data import load_dataset  # noqa: E402
from kdcore.evaluate import model_profile  # noqa: E402
from kdcore.models import create_model  # noqa: E402
from kdcore.stages import StageEnv, TeacherSource, build_features  # noqa: E402
from kdcore.stages.distill import _train_with_objective  # noqa: E402
from kdcore.train.checkpoint import load_model, save_model  # noqa: E402


def config(args, home: Path):
    return config_from_dict(
        {
            "data": {"name": "fashion_mnist", "limit_train": args.limit_train, "limit_test": 1000},
            "teacher": {"arch": args.teacher_arch},
            "student": {"arch": args.student_arch},
            "cache": {"views": {"policy": "shift" if args.views > 1 else "none", "num_views": args.views, "pad": 2}},
            "distill": {"train": {"max_epochs": args.epochs, "batch_size": args.batch_size, "lr": 0.05}},
            "trainer": {"device": "cpu", "num_threads": args.threads},
        }
    )


class InMemory(TeacherSource):
    """Teacher outputs already in memory: what is left is the student's own step."""

    def __init__(self, env, logits: torch.Tensor, seeds):
        super().__init__(env, None, torch.nn.Identity(), [])
        self.logits, self._seeds = logits, seeds

    def seeds(self, split, n):
        return self._seeds

    def get(self, split, idx, views, x_view):
        return self.logits[idx, views], {}


def train_seconds(env, source, label) -> list[float]:
    student = env.new_student()
    env.workdir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=env.workdir.parent))
    fit, _ = _train_with_objective(
        env, student, env.cfg.distill.objective_spec(), env.cfg.distill.train, source, "distill"
    )
    return [len(env.data.train) / h["samples_per_s"] for h in fit.history]


def build_in_child(args, home: Path, teacher_path: Path) -> dict:
    """Build the cache in a fresh process and report its time and peak RSS."""
    out = subprocess.run(
        [sys.executable, __file__, "--_build", str(home), str(teacher_path), *sys.argv[1:]],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_build(args, home: Path, teacher_path: Path) -> None:
    cfg = config(args, home)
    data = load_dataset(cfg.data)
    teacher = load_model(teacher_path)
    env = StageEnv(cfg, data, home / "work-build")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    entries = build_features(env, teacher, "bench-" + teacher_path.stem, home / "cache")
    seconds = time.perf_counter() - t0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rss_before_mb": rss_before / 1024,
                "rss_peak_mb": rss_peak / 1024,
                "keys": {s: e.key for s, (e, _) in entries.items()},
                "bytes": sum(e.size_bytes() for e, _ in entries.values()),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher-arch", default="cnn_large")
    ap.add_argument("--student-arch", default="cnn_small")
    ap.add_argument("--teacher", type=Path, default=None, help="a kdflow teacher checkpoint (.safetensors)")
    ap.add_argument("--_build", nargs=2, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args._build:
        child_build(args, Path(args._build[0]), Path(args._build[1]))
        return

    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="kdflow-cache-bench-"))
    cfg = config(args, home)
    data = load_dataset(cfg.data)
    if args.teacher is None:
        torch.manual_seed(0)
        teacher = create_model(cfg.teacher.arch, in_channels=data.in_channels, num_classes=data.num_classes)
        args.teacher = home / "teacher.safetensors"
        save_model(teacher, args.teacher)
    teacher = load_model(args.teacher).eval()
    student = create_model(cfg.student.arch, in_channels=data.in_channels, num_classes=data.num_classes)
    t_flops = model_profile(teacher, data.input_shape, latency=False)["flops"]
    s_flops = model_profile(student, data.input_shape, latency=False)["flops"]

    build = build_in_child(args, home, args.teacher)
    entries = {s: open_entry(home / "cache", k) for s, k in build["keys"].items()}
    env = StageEnv(cfg, data, home / "work")
    paths: list[str] = []
    online = train_seconds(env, TeacherSource(env, None, teacher, paths), "online")
    cached = train_seconds(env, TeacherSource(env, entries, None, paths), "cached")
    logits = entries["train"].read_all("logits")
    alone = train_seconds(env, InMemory(env, logits, entries["train"].seeds()), "student")

    # the teacher's forward over the same images (each sample at its epoch view), alone
    from kdcore.data.augment import apply_views, epoch_views

    x = data.train.x
    seeds = torch.from_numpy(entries["train"].seeds())
    fwd = []
    with torch.inference_mode():
        for epoch in range(args.epochs):
            v = epoch_views(len(x), args.views, cfg.cache.views.seed, epoch)
            t0 = time.perf_counter()
            for i in range(0, len(x), args.batch_size):
                xb = apply_views(
                    x[i : i + args.batch_size],
                    seeds[i : i + args.batch_size, :][
                        torch.arange(min(args.batch_size, len(x) - i)), v[i : i + args.batch_size]
                    ],
                    cfg.cache.views.policy,
                    cfg.cache.views.pad,
                )
                teacher(xb)
            fwd.append(time.perf_counter() - t0)

    a, b = statistics.median(online), statistics.median(cached)
    s, t = statistics.median(alone), statistics.median(fwd)
    bound = (s + t) / s
    print(
        f"Fashion-MNIST, {len(x)} train images x {args.views} views, batch {args.batch_size}, "
        f"{args.threads} threads, medians of {args.epochs} epochs"
    )
    print(
        f"teacher {cfg.teacher.arch}: {t_flops / 1e6:.1f} MFLOP/sample; student {cfg.student.arch}: "
        f"{s_flops / 1e6:.2f} MFLOP/sample (ratio {t_flops / s_flops:.1f}x)"
    )
    print(f"(a) distillation epoch, teacher online   {a:8.2f} s   {online}")
    print(f"(b) distillation epoch, from the cache   {b:8.2f} s   {cached}")
    print(f"(c) teacher forward alone                {t:8.2f} s")
    print(f"    student train steps alone            {s:8.2f} s")
    print(f"speed-up a/b                             {a / b:8.2f} x")
    print(f"bound (student + teacher fwd) / student  {bound:8.2f} x")
    print(f"measured / bound                         {(a / b) / bound:8.2f}   (target >= 0.90)")
    print(f"cache build time                         {build['seconds']:8.2f} s  (train views + val)")
    print(f"break-even                               {build['seconds'] / max(a - b, 1e-9):8.2f} epochs")
    print(f"cache size on disk                       {build['bytes'] / 2**20:8.2f} MB")
    print(
        f"peak RSS of the building process         {build['rss_peak_mb']:8.1f} MB  (before building: "
        f"{build['rss_before_mb']:.1f} MB)"
    )


if __name__ == "__main__":
    main()
