"""kdcore's deterministic mode against torch's default on the CPU: training steps alternated in one process.

kdcore's stages call ``torch.use_deterministic_algorithms(True, warn_only=True)`` (with
``torch.utils.deterministic.fill_uninitialized_memory = False``) unless ``trainer.deterministic`` is
false; a plain PyTorch loop (bench/bare_loop.py's) does not. This script asks whether that setting
costs speed: the same model trains on random batches of the same in-memory data, the setting
switched between rounds (the order alternates so that warm-up and drift fall on both), and it prints
images/s and minor page faults per round, then the ratio of the medians.

    .venv/bin/python bench/deterministic_ab.py --rounds 4               # resnet14, 40 steps per round
    .venv/bin/python bench/deterministic_ab.py --arch cnn --steps 200   # issue 12's student
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet14", help="a kdcore architecture (resnet14: issue 12's teacher)")
    p.add_argument("--rounds", type=int, default=4, help="rounds; each trains once with and once without")
    p.add_argument("--steps", type=int, default=40, help="training steps per measurement")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch
    import torch.nn.functional as F
    import torch.utils.deterministic

    from kdcore.models import create_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n = 54_000  # Fashion-MNIST's training split as kdflow uses it; random pixels: speed only
    x, y = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    kwargs = {"channels": [16, 24, 24]} if args.arch == "cnn" else {}
    model = create_model(args.arch, in_channels=1, num_classes=10, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]  # as kdcore sets it

    def measure(deterministic: bool, steps: int) -> tuple[float, int]:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        model.train()
        faults0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(0, n, (args.batch_size,))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        seconds = time.perf_counter() - t0
        return steps * args.batch_size / seconds, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0

    measure(False, 5)  # warm-up, not counted
    rates: dict[bool, list[float]] = {True: [], False: []}
    print(f"{args.arch}, batch {args.batch_size}, {args.threads} threads, {args.steps} steps per measurement")
    print("| round | deterministic | images/s | minor page faults |\n|---|---|---|---|")
    for r in range(args.rounds):
        for det in (False, True) if r % 2 == 0 else (True, False):
            rate, faults = measure(det, args.steps)
            rates[det].append(rate)
            print(f"| {r + 1} | {det} | {rate:.0f} | {faults} |", flush=True)
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"median images/s: deterministic {on:.0f}, default {off:.0f}; deterministic / default = {on / off:.3f}")


if __name__ == "__main__":
    main()
