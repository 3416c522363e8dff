"""What a DataLoader worker costs to start, by what its forkserver imported beforehand.

In a process running threads (a Prefect flow's stages), kdflow's DataLoader workers come from a
``forkserver`` (kdcore/train/batches.py says why) that imports some modules once, before it forks
any worker. Whatever a worker needs beyond those it imports itself, in every worker of every
loader. This script streams a small image folder (the tests' kind: 3 classes of 30 PNGs, 32 px) with
one worker, beside a second thread as in a flow, for each preload list in a fresh process, and
prints the worker's CPU seconds (user + system, read from the worker just before its loader ends)
and the wall time of a loader's first batch: the median over ``--loaders`` loaders, each a new worker.

Usage:
  python bench/loader_workers.py [--loaders 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

OLD = ["torch", "kdcore.train.ddp", "kdcore.stages"]  # kdflow's list before 2026-12-05 (commit 0d9c490)


def child(folder: str, preload: list[str], loaders: int) -> dict:
    import psutil
    import torch

    from kdcore.config import DataConfig
    from kdcore.data import load_dataset
    from kdcore.train import batches

    batches.FORKSERVER_PRELOAD = preload  # the list under test, in place of kdflow's own
    stop = threading.Event()
    beside = threading.Thread(target=stop.wait, daemon=True)  # a flow's threads: workers come from the forkserver
    beside.start()
    cfg = DataConfig(
        name="imagefolder", root=folder, image_size=32, in_memory=False, num_workers=1, decoded_store=False
    )
    split = load_dataset(cfg).train
    dataset = split.x.dataset
    cpu, first = [], []
    for _ in range(loaders):
        rows = list(range(len(dataset)))
        sampler = [rows[i : i + 16] for i in range(0, len(rows), 16)]
        loader = batches.make_loader(dataset, sampler, 1, torch.device("cpu"))
        it = iter(loader)
        t = time.perf_counter()
        next(it)
        first.append(time.perf_counter() - t)
        for _ in range(len(loader) - 1):  # every batch, stopping short of the end (which stops the worker)
            next(it)
        times = [psutil.Process(w.pid).cpu_times() for w in it._workers]  # type: ignore[attr-defined]
        cpu.append(sum(c.user + c.system for c in times))
        del it, loader
    stop.set()
    return {"cpu": cpu, "first": first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loaders", type=int, default=5)
    ap.add_argument("--child", nargs="*")
    args = ap.parse_args()
    if args.child is not None:
        folder, *preload = args.child
        print(json.dumps(child(folder, preload, args.loaders)))
        return
    from images import write_image_folder  # tests/images.py: the folders the tests stream

    from kdcore.train.batches import FORKSERVER_PRELOAD as current

    with tempfile.TemporaryDirectory() as tmp:
        folder = str(write_image_folder(Path(tmp) / "images"))
        print(f"one worker per loader, {args.loaders} loaders, 90 PNGs of 32 px")
        print("| forkserver preload | worker CPU s (median) | first batch s (median) |")
        print("|---|---|---|")
        for name, preload in (("before", OLD), ("kdflow's now", current)):
            cmd = [sys.executable, __file__, "--loaders", str(args.loaders), "--child", folder, *preload]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            cpu, first = statistics.median(r["cpu"]), statistics.median(r["first"])
            print(f"| {name}: {', '.join(preload)} | {cpu:.2f} | {first:.2f} |")


if __name__ == "__main__":
    main()
