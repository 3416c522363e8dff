"""Images/s of a no-grad forward against its batch size on the CPU: issue 12's `resnet14` teacher
(what the cache build and the teacher's validation run) and its `cnn` [16, 24, 24] student (what
validation runs), 28 x 28 single-channel inputs, float32 NCHW.

kdcore's no-grad forwards take :func:`kdcore.train.device.forward_batch_size` images at a time (128
on the CPU); this script shows why. Batch sizes alternate in order and reverse order over rounds in
one process; it prints the median images/s per batch size and the ratio to 512 (the size the cache
build used before).

Usage:
  .venv/bin/python bench/forward_batch.py [--threads 2] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cpu_bf16 import issue12_models  # noqa: E402
from kdcore.train.device import forward_batch_size  # noqa: E402

SIZES = (32, 64, 128, 256, 512)


@torch.no_grad()
def images_per_s(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> float:
    model(x[:batch_size])  # warm the kernels for this shape
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    student, teacher = issue12_models()
    models = {"resnet14 teacher": (teacher, 3072), "cnn [16, 24, 24] student": (student.eval(), 6144)}
    x = torch.randn(6144, 1, 28, 28)
    rates: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for name, (model, n) in models.items():
            for size in SIZES if r % 2 == 0 else reversed(SIZES):
                rates.setdefault((name, size), []).append(images_per_s(model, x[:n], size))
    chosen = forward_batch_size(torch.device("cpu"), (1, 28, 28))
    print(f"no-grad forward, float32, {args.threads} threads, medians of {args.rounds} rounds")
    print("| model | batch | images/s | vs 512 |\n|---|---|---|---|")
    for name in models:
        base = statistics.median(rates[(name, 512)])
        for size in SIZES:
            median = statistics.median(rates[(name, size)])
            mark = " (kdcore's CPU default)" if size == chosen else ""
            print(f"| {name} | {size}{mark} | {median:,.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
