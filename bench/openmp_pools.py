"""Why a stage trained in a worker thread ran slower than in the main thread, side by side.

The training step of issue 12's student (`cnn` [16, 24, 24], batch 128, SGD) runs in the main
thread, then in a fresh worker thread while the main thread keeps the OpenMP pool its own step made,
then in another worker thread after the main thread handed that pool back
(kdcore.train.openmp.release_thread_pool). Rounds repeat the three; it prints images/s (median) and
each rate's ratio to the main thread's.

Usage: .venv/bin/python bench/openmp_pools.py [--threads 2] [--rounds 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdcore.models import create_model  # noqa: E402
from kdcore.train.openmp import release_thread_pool  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1, num_classes=10, channels=[16, 24, 24])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))

    def rate() -> float:
        for i in range(args.steps + 20):  # 20 warm-up steps
            if i == 20:
                t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return args.steps * len(x) / (time.perf_counter() - t0)

    def in_worker() -> float:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(rate).result()

    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        rates.setdefault("main thread", []).append(rate())
        rates.setdefault("worker, main's pool kept", []).append(in_worker())
        release_thread_pool()
        rates.setdefault("worker, main's pool released", []).append(in_worker())
    main_rate = statistics.median(rates["main thread"])
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds of {args.steps} steps")
    print(f"{'where the step runs':<32}{'img/s':>8}{'ratio':>8}")
    for name, values in rates.items():
        r = statistics.median(values)
        print(f"{name:<32}{r:>8.0f}{r / main_rate:>8.2f}")


if __name__ == "__main__":
    main()
