"""bf16 autocast on the CPU against float32, side by side: the training step of issue 12's student
(`cnn` [16, 24, 24], batch 128, SGD) and the forward of its teacher (`resnet14`, eval, batch 512, as
the cache build runs it), on 28 x 28 single-channel inputs. CPUs with AMX or AVX512-BF16 run bf16
matrix work in hardware; elsewhere bf16 can be slower. The two precisions alternate over rounds
in one process; the script prints images/s (median over rounds) and the ratio.

Usage:
  .venv/bin/python bench/cpu_bf16.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdcore.models import create_model  # noqa: E402
from kdcore.train.device import autocast  # noqa: E402


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return " ".join(sorted(f for f in flags if f.startswith(("amx", "avx512_bf16")))) or "none"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    student = create_model("cnn", in_channels=1, num_classes=10, channels=[16, 24, 24])
    teacher = create_model("resnet14", in_channels=1, num_classes=10).eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    xt = torch.randn(512, 1, 28, 28)

    def step(dtype):
        with autocast(cpu, dtype):
            loss = F.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward(dtype):
        with torch.inference_mode(), autocast(cpu, dtype):
            teacher(xt)

    work = {"student train step": (step, 40, 128), "teacher forward": (forward, 8, 512)}
    rates: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for name, (fn, reps, per) in work.items():
            order = (None, torch.bfloat16) if r % 2 == 0 else (torch.bfloat16, None)
            for dtype in order:
                fn(dtype)  # warm-up: oneDNN picks its kernels on first use
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn(dtype)
                rate = reps * per / (time.perf_counter() - t0)
                rates.setdefault((name, "bf16" if dtype else "fp32"), []).append(rate)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU bf16 features: {cpu_flags()}")
    print(f"{'work':<22}{'fp32 img/s':>12}{'bf16 img/s':>12}{'bf16 / fp32':>13}")
    for name in work:
        fp32, bf16 = (statistics.median(rates[(name, k)]) for k in ("fp32", "bf16"))
        print(f"{name:<22}{fp32:>12.0f}{bf16:>12.0f}{bf16 / fp32:>13.2f}")


if __name__ == "__main__":
    main()
