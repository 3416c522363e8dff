"""CPU settings side by side: bf16 autocast against float32, channels-last against NCHW, and the
validation batch size, on issue 12's models and 28 x 28 single-channel inputs.

* the training step of the student (`cnn` [16, 24, 24], batch 128, SGD): fp32, bf16 (autocast),
  fp32 channels-last, bf16 channels-last (`trainer.amp: bf16`, `trainer.channels_last: true`);
* the forward of the teacher (`resnet14`, eval, batch 512, as the cache build runs it): the same four;
* a validation pass of the student over 6,000 images (kdcore's `classifier_val`) with 1,024 and with
  256 images a forward.

CPUs with AMX or AVX512-BF16 run bf16 matrix work in hardware; elsewhere bf16 can be slower. The
settings alternate over rounds in one process (the order reversed every other round); the script
prints images/s (median over rounds) and the ratio to the first setting of each row.

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
from kdcore.stages.env import classifier_val  # noqa: E402
from kdcore.train.device import autocast  # noqa: E402

CPU = torch.device("cpu")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp32 channels-last": None, "bf16 channels-last": torch.bfloat16}


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    return " ".join(sorted(f for f in flags if f.startswith(("amx", "avx512_bf16")))) or "none"


def layout(model: torch.nn.Module, setting: str) -> torch.nn.Module:
    fmt = torch.channels_last if "channels-last" in setting else torch.contiguous_format
    return model.to(memory_format=fmt)


def issue12_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """Issue 12's student (`cnn` [16, 24, 24]) and teacher (`resnet14`, in eval mode) for 28 x 28
    single-channel inputs and 10 classes, initialised from seed 0."""
    torch.manual_seed(0)
    student = create_model("cnn", in_channels=1, num_classes=10, channels=[16, 24, 24])
    return student, create_model("resnet14", in_channels=1, num_classes=10).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    student, teacher = issue12_models()
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    xt = torch.randn(512, 1, 28, 28)
    xv, yv = torch.randn(6000, 1, 28, 28), torch.randint(0, 10, (6000,))

    def step(setting: str) -> int:
        layout(student, setting).train()
        for _ in range(40):
            with autocast(CPU, PRECISIONS[setting]):
                loss = F.cross_entropy(student(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return 40 * len(x)

    def forward(setting: str) -> int:
        layout(teacher, setting)
        with torch.inference_mode(), autocast(CPU, PRECISIONS[setting]):
            for _ in range(8):
                teacher(xt)
        return 8 * len(xt)

    def validate(setting: str) -> int:
        layout(student, "fp32")
        classifier_val(student, xv, yv, batch_size=int(setting.split()[1]))
        return len(xv)

    rows = {
        "student train step": (step, list(PRECISIONS)),
        "teacher forward": (forward, list(PRECISIONS)),
        "validation pass": (validate, ["batch 1024", "batch 256"]),
    }
    rates: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for name, (fn, settings) in rows.items():
            for setting in settings if r % 2 == 0 else settings[::-1]:
                fn(setting)  # warm-up: oneDNN picks its kernels on first use
                t0 = time.perf_counter()
                n = fn(setting)
                rates.setdefault((name, setting), []).append(n / (time.perf_counter() - t0))
    print(f"torch {torch.__version__}, {args.threads} threads, CPU bf16 features: {cpu_flags()}")
    print(f"{'work':<20}{'setting':<22}{'img/s':>10}{'ratio':>8}")
    for name, (_, settings) in rows.items():
        first = statistics.median(rates[(name, settings[0])])
        for setting in settings:
            rate = statistics.median(rates[(name, setting)])
            print(f"{name:<20}{setting:<22}{rate:>10.0f}{rate / first:>8.2f}")


if __name__ == "__main__":
    main()
