"""Streaming image data at two sizes: peak memory per stage, loader throughput, epoch time.

Writes Fashion-MNIST (the Debian package ``dataset-fashion-mnist``, /usr/share/datasets/fashion-mnist)
as a 64-px RGB PNG image folder of the first N images (train then t10k) for each N of ``--sizes``,
then runs the pipeline's stages on it with ``data.in_memory: false`` — teacher, features (the
teacher cache, 2 views, top-k fp16), distill, evaluate — each stage in a fresh process so that its
peak RSS is its own. It prints, per size: peak RSS per stage (the stage process; its largest child's
RSS; and its DataLoader workers' largest Pss and private memory, sampled, since a forked worker's RSS
counts the pages it shares with its parent), the loader's images/s (one pass over the train split with augmentation, no
model), and for the smallest size the distillation epoch time of three variants: streamed from the
decoded-image store (``data.decoded_store``, the default), streamed decoding every file at every
read, and in memory; two epochs per run (``--compare-epochs``), each run in a fresh process, the
three alternated over ``--compare-rounds`` rounds (medians; this machine's speed drifts by tens of
percent within minutes). The first epoch of a streamed run also starts the DataLoader's worker
processes (once per process), so the ratio is taken on the last epoch and the first epoch's is
printed beside it. The stage processes run with ``KDFLOW_HOME`` under ``--out``: the first one that
loads the data writes the decoded store (its ``load`` seconds).

The stages are kdcore's own functions (no Prefect/MLflow), so the figures are the data path's.
Targets (issue 11): peak RSS at 70,000 images within 1.25x of 7,000; the streamed distillation
epoch within 1.5x of the in-memory one.

    python bench/scale.py --sizes 7000            # about 7 minutes on two cores
    python bench/scale.py --sizes 7000 70000      # + writing and running 70,000 images
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIDE = 64
STAGES = ("loader", "teacher", "features", "distill", "evaluate")


def write_folder(out: Path, n: int) -> Path:
    """The first ``n`` Fashion-MNIST images (train, then t10k) as ``out/<class>/<i>.png``, 64-px RGB."""
    import numpy as np
    from PIL import Image

    from kdcore.data.fashion_mnist import CLASS_NAMES, SYSTEM_DIRS, find_files
    from kdcore.data.idx import read_idx

    done = out / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return out
    files = find_files(SYSTEM_DIRS[0])
    if files is None:
        sys.exit(f"Fashion-MNIST not found in {SYSTEM_DIRS[0]}: apt-get install dataset-fashion-mnist")
    x = np.concatenate([read_idx(files["train_x"]), read_idx(files["test_x"])])[:n]
    y = np.concatenate([read_idx(files["train_y"]), read_idx(files["test_y"])])[:n]
    names = [c.replace("/", "-").replace(" ", "_") for c in CLASS_NAMES]
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y)):
        Image.fromarray(img).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR).save(
            out / names[int(label)] / f"{i:06d}.png", compress_level=1
        )
    done.write_text(str(n))
    return out


def config(folder: Path, in_memory: bool, workers: int, epochs: int = 1, store: bool = True):
    from kdcore.config import config_from_dict

    train = {"max_epochs": epochs, "batch_size": 128, "scheduler": "none"}
    return config_from_dict(
        {
            "name": "scale",
            "data": {
                "name": "imagefolder",
                "root": str(folder),
                "image_size": SIDE,
                "in_memory": in_memory,
                "num_workers": workers,
                "augment": {"scale": [0.5, 1.0]},
                "decoded_store": store,
            },
            "teacher": {"arch": "cnn_small", "train": train},
            "student": {"arch": "cnn_tiny"},
            "cache": {"views": {"policy": "crop_flip", "num_views": 2}, "dtype": "float16", "topk": 5},
            "distill": {"train": train},
            "evaluate": {"latency": False, "min_run_time": 0.01, "throughput_batch": 32},
            "trainer": {"device": "cpu"},
        }
    )


class WorkerMemory(threading.Thread):
    """The largest proportional set size (Pss) and private memory (Private_Clean + Private_Dirty) of
    any child of process ``pid``, sampled every ``every`` seconds from ``/proc/PID/smaps_rollup``
    (Linux; zeros elsewhere). A forked DataLoader worker's RSS counts every page it shares with its
    parent; its private memory is what it adds, its Pss its share of the total. It runs in this
    (the benchmark's) process: a thread in the stage process would make kdcore start its workers
    with forkserver instead of fork (kdcore.train.batches.worker_context)."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.pss_kb, self.private_kb = pid, every, 0, 0
        self.done = threading.Event()

    def _children(self) -> list[str]:
        pids: list[str] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                pids += (task / "children").read_text().split()
            except OSError:
                pass
        return pids

    def run(self) -> None:
        while not self.done.wait(self.every):
            for pid in self._children():
                try:
                    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
                except OSError:
                    continue
                kb = {f[0].rstrip(":"): int(f[1]) for f in (line.split() for line in lines) if len(f) == 3}
                self.pss_kb = max(self.pss_kb, kb.get("Pss", 0))
                self.private_kb = max(self.private_kb, kb.get("Private_Clean", 0) + kb.get("Private_Dirty", 0))


def run_stage(
    stage: str, folder: Path, work: Path, in_memory: bool, workers: int, epochs: int = 1, store: bool = True
) -> dict:
    """One stage in this process (called in a fresh child by :func:`child`)."""
    import torch

    from kdcore.data import load_dataset
    from kdcore.stages import (
        StageEnv,
        TeacherSource,
        build_features,
        distill_student,
        evaluate_models,
        teacher_paths,
        train_teacher,
    )
    from kdcore.train.checkpoint import load_model, save_model

    cfg = config(folder, in_memory, workers, epochs, store)
    t0 = time.perf_counter()
    data = load_dataset(cfg.data)
    out: dict = {"load_seconds": time.perf_counter() - t0, "decoded_store": data.extras.get("decoded_store")}
    kind = "mem" if in_memory else ("stream" if store else "decode")
    stage_dir = work / f"{stage}-{kind}-{epochs}"
    shutil.rmtree(stage_dir, ignore_errors=True)  # a fresh run: a stage would resume from the checkpoints there
    env = StageEnv(cfg, data, stage_dir)
    t0 = time.perf_counter()
    if stage == "teacher":
        res = train_teacher(env)
        save_model(res.model, work / "teacher.safetensors", {"stage": "teacher"})
        out["val_top1"] = res.metrics["val_top1"]
    elif stage == "loader":
        source = env.train_source(lambda epoch, idx: [(i, i * 7919 + epoch) for i in idx.tolist()])
        n = 0
        for b in source.epoch(0, 0, 128):
            n += len(b)
        out["images_per_s"] = n / (time.perf_counter() - t0)
    elif stage in ("features", "distill"):
        teacher = (
            load_model(work / "teacher.safetensors")
            if (work / "teacher.safetensors").is_file()
            else env.build("cnn_small", {}, 0)
        )  # a memory run without the teacher stage: fresh weights
        entries = build_features(env, teacher, "scale-teacher", work / "cache")
        if stage == "distill":
            init = work / "student-init.safetensors"
            save_model(env.new_student(), init, {"stage": "init"})
            source = TeacherSource(env, {s: e for s, (e, _) in entries.items()}, None, teacher_paths(cfg))
            t0 = time.perf_counter()
            res = distill_student(env, init, source)
            save_model(res.model, work / "student.safetensors", {"stage": "distill"})
            out["epoch_seconds"] = res.fit.history[0]["epoch_seconds"]
            out["epochs_seconds"] = [h["epoch_seconds"] for h in res.fit.history]
            out["val_top1"] = res.metrics["val_top1"]
    elif stage == "evaluate":
        if (work / "student.safetensors").is_file():
            models = {
                "teacher": load_model(work / "teacher.safetensors"),
                "student": load_model(work / "student.safetensors"),
            }
        else:  # a memory/throughput run without training: fresh models
            models = {"teacher": env.build("cnn_small", {}, 0), "student": env.new_student()}
        res = evaluate_models(env, models)
        out["test_top1"] = {k: v["metrics"].get("top1") for k, v in res.items()}
    out["seconds"] = time.perf_counter() - t0
    torch.set_num_threads(1)
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return out


def child(
    stage: str, folder: Path, work: Path, in_memory: bool, workers: int, epochs: int = 1, store: bool = True
) -> dict:
    cmd = (
        [
            sys.executable,
            __file__,
            "--stage",
            stage,
            "--folder",
            str(folder),
            "--work",
            str(work),
            "--workers",
            str(workers),
            "--epochs",
            str(epochs),
        ]
        + (["--in-memory"] if in_memory else [])
        + ([] if store else ["--no-store"])
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "KDFLOW_HOME": str(work / "home"),
    }
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        mem = WorkerMemory(proc.pid)
        mem.start()
        stdout, stderr = proc.communicate()
        mem.done.set()
        mem.join()
    if proc.returncode != 0:
        sys.exit(f"stage {stage} failed:\n{stderr[-3000:]}")
    out = json.loads(stdout.strip().splitlines()[-1])
    out["worker_pss_mb"], out["worker_private_mb"] = mem.pss_kb / 1024, mem.private_kb / 1024
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[7000, 70000])
    p.add_argument("--out", type=Path, default=Path("/tmp/kdflow-scale"))
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (default 1: a two-core machine)")
    p.add_argument(
        "--stages",
        nargs="+",
        default=list(STAGES),
        choices=STAGES,
        help="stages to run (features/distill need teacher; evaluate needs distill, or runs the "
        "teacher and an untrained student)",
    )
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-store", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument(
        "--compare-epochs", type=int, default=2, help="distillation epochs of the streamed vs in-memory runs"
    )
    p.add_argument("--compare-rounds", type=int, default=3, help="rounds of the three alternated distillation runs")
    args = p.parse_args()
    if args.stage:
        out = run_stage(
            args.stage, args.folder, args.work, args.in_memory, args.workers, args.epochs, not args.no_store
        )
        print(json.dumps(out))
        return

    results = {}
    for n in sorted(args.sizes):
        t0 = time.perf_counter()
        folder = write_folder(args.out / f"fmnist-{n}" / "images", n)
        print(f"\n== {n} images ({SIDE}-px RGB PNG, written in {time.perf_counter() - t0:.0f} s) ==", flush=True)
        work = args.out / f"fmnist-{n}" / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        rows = {}
        for stage in args.stages:
            rows[stage] = r = child(stage, folder, work, False, args.workers)
            extra = {
                k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in r.items()
                if k
                not in (
                    "rss_mb",
                    "worker_rss_mb",
                    "worker_pss_mb",
                    "worker_private_mb",
                    "load_seconds",
                    "decoded_store",
                )
            }
            print(
                f"{stage:9s} peak RSS {r['rss_mb']:7.1f} MB (largest child {r['worker_rss_mb']:6.1f} MB; worker "
                f"Pss {r['worker_pss_mb']:6.1f}, private {r['worker_private_mb']:6.1f} MB)  "
                f"load {r['load_seconds']:5.1f} s  {extra}",
                flush=True,
            )
        results[n] = rows
        if n == min(args.sizes) and "distill" in args.stages:
            k = args.compare_epochs
            variants = {
                "streamed, decoded store": dict(in_memory=False, store=True),
                "streamed, decoding files": dict(in_memory=False, store=False),
                "in memory": dict(in_memory=True, store=True),
            }
            epochs: dict[str, list[list[float]]] = {name: [] for name in variants}
            rss: dict[str, float] = {}
            for r in range(args.compare_rounds):  # alternated: the machine's speed drifts between rounds
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    v = variants[name]
                    out = child("distill", folder, work, v["in_memory"], args.workers, k, store=v["store"])
                    epochs[name].append(out["epochs_seconds"])
                    rss[name] = max(rss.get(name, 0.0), out["rss_mb"])
            last = {name: statistics.median(e[-1] for e in runs) for name, runs in epochs.items()}
            first = {name: statistics.median(e[0] for e in runs) for name, runs in epochs.items()}
            print(
                f"distill epochs ({k} per run, {args.compare_rounds} rounds alternated, fresh processes; medians; "
                "ratios against in memory, target <= 1.5x):"
            )
            for name, runs in epochs.items():
                shown = "; ".join(", ".join(f"{v:.2f}" for v in e) for e in runs)
                print(
                    f"  {name:25s} last epoch {last[name]:.2f} s = {last[name] / last['in memory']:.2f}x, first "
                    f"(with the workers' start) {first[name]:.2f} s = {first[name] / first['in memory']:.2f}x; "
                    f"peak RSS {rss[name]:.0f} MB  [{shown}]",
                    flush=True,
                )
    if len(results) > 1:
        lo, hi = min(results), max(results)
        print()
        for stage in set(results[lo]) & set(results[hi]):
            a, b = results[lo][stage]["rss_mb"], results[hi][stage]["rss_mb"]
            print(f"peak RSS {stage:9s} {hi}: {b:7.1f} MB vs {lo}: {a:7.1f} MB -> {b / a:.2f}x (target <= 1.25x)")


if __name__ == "__main__":
    main()
