"""glibc's default heap thresholds against kdcore's (kdcore/train/allocator.py), in alternated processes.

The same training step (random Fashion-MNIST-sized batches from memory, SGD Nesterov, batch 128)
runs in a fresh process for each measurement, once with the C library's defaults
(``KDFLOW_ALLOCATOR=system``) and once after ``kdcore.train.allocator.keep_heap()``, the order
alternating per round so that the machine's drift falls on both. By default the step runs in a
worker thread, as a Prefect task runs a stage, and a validation pass (forwards of 1,024 images)
follows the timed steps. Prints images/s and minor page faults per step of every measurement, the
process's peak and final resident memory (VmHWM, VmRSS), then the medians and their ratio.

    .venv/bin/python bench/allocator.py                          # resnet14 (issue 12's teacher), 6 rounds
    .venv/bin/python bench/allocator.py --arch cnn --steps 300   # issue 12's 9k student
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("system", "kept")


def child(arch: str, steps: int, threads: int, in_worker: bool) -> None:
    """One measurement in this process: warm-up, then ``steps`` timed steps; prints a JSON line."""
    import resource
    import threading
    import time

    sys.path.insert(0, str(ROOT))
    import torch
    import torch.nn.functional as F

    from kdcore.models import create_model
    from kdcore.train.allocator import keep_heap

    state = keep_heap()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    n = 54_000
    x, y = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    kwargs = {"channels": [16, 24, 24]} if arch == "cnn" else {}
    model = create_model(arch, in_channels=1, num_classes=10, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    out: dict[str, object] = {"allocator": state}

    def train(k: int) -> None:
        for _ in range(k):
            idx = torch.randint(0, n, (128,))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def run() -> None:
        torch.set_num_threads(threads)
        train(10)  # warm-up, not counted
        faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        train(steps)
        seconds = time.perf_counter() - t0
        out["images_per_s"] = steps * 128 / seconds
        out["faults_per_step"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
        with torch.no_grad():  # untimed: a validation pass's larger batches share the heap with the steps'
            for i in range(0, 10_240, 1024):
                model(x[i : i + 1024])

    if in_worker:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    else:
        run()
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    out["peak_rss_mb"], out["rss_mb"] = (int(status[k].split()[0]) / 1024 for k in ("VmHWM", "VmRSS"))
    print(json.dumps(out))


def measure(variant: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env["KDFLOW_ALLOCATOR"] = "system" if variant == "system" else "kept"
    env.update(OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--child", "--arch", args.arch, "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads)] + ([] if args.worker else ["--main-thread"])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = "system: KDFLOW_ALLOCATOR=system" if variant == "system" else "kept"
    if row["allocator"] != expected:
        raise SystemExit(f"the {variant} process reported allocator {row['allocator']!r}, not {expected!r}")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet14", help="a kdcore architecture (resnet14: issue 12's teacher)")
    p.add_argument("--rounds", type=int, default=6, help="rounds; each measures both variants once")
    p.add_argument("--steps", type=int, default=60, help="timed training steps per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--main-thread", dest="worker", action="store_false", help="train in the main thread")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.arch, args.steps, args.threads, args.worker)
        return
    where = "a worker thread" if args.worker else "the main thread"
    print(f"{args.arch}, batch 128, {args.threads} threads, {args.steps} steps per measurement, in {where}")
    print("| round | allocator | images/s | minor page faults / step | peak / final RSS MB |\n|---|---|---|---|---|")
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    faults: dict[str, list[float]] = {v: [] for v in VARIANTS}
    peak: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            row = measure(variant, args)
            rates[variant].append(row["images_per_s"])
            faults[variant].append(row["faults_per_step"])
            peak[variant].append(row["peak_rss_mb"])
            print(
                f"| {r + 1} | {variant} | {row['images_per_s']:.0f} | {row['faults_per_step']:.0f} "
                f"| {row['peak_rss_mb']:.0f} / {row['rss_mb']:.0f} |",
                flush=True,
            )
    med = {v: statistics.median(rates[v]) for v in VARIANTS}
    per_round = [k / s for k, s in zip(rates["kept"], rates["system"])]
    print(
        f"median images/s: system {med['system']:.0f}, kept {med['kept']:.0f}; kept / system = "
        f"{med['kept'] / med['system']:.3f} (per round {', '.join(f'{r:.2f}' for r in per_round)}); "
        f"median faults / step: system {statistics.median(faults['system']):.0f}, "
        f"kept {statistics.median(faults['kept']):.0f}; median peak RSS: system "
        f"{statistics.median(peak['system']):.0f} MB, kept {statistics.median(peak['kept']):.0f} MB"
    )


if __name__ == "__main__":
    main()
