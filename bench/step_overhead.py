"""The host time of one distillation step, kdflow's against a bare PyTorch loop's, where the
arithmetic is negligible: what a small student on a GPU waits on.

On a GPU a 9k-parameter student's step at batch 512 took 4-6 ms against 2.0-2.3 ms of kernels: the
rest is host work (Python, the dispatcher, kernel launches), so every op and call a step makes beyond
the bare loop's shows in its speed (bench/README.md, the GPU runs of vs_torchdistill.py). This machine has
no GPU; this script makes the CPU show the same thing: 8 x 8 single-channel inputs, `cnn_tiny`
teacher and student (1,442 parameters each), batch 16, one thread, so a step's arithmetic is tens
of microseconds and its time is mostly host time. The same loss as vs_torchdistill.py
(0.1 * CE + 0.9 * T^2 * KL, T = 4), SGD with Nesterov momentum, the same batch order.

Variants (each trains the same student from the same initialisation):

  bare            a minimal loop, the teacher run on each batch
  kdflow          kdcore's distill stage (``distill_student``), the teacher online
  bare-cached     the minimal loop reading the teacher's logits from a tensor
  kdflow-cached   kdcore's distill stage reading them from the features cache

It prints, per variant, the median microseconds a training step takes (epoch training time, no
validation, over its steps; rounds alternate the order) and the aten ops one step issues (counted
by torch.profiler between consecutive optimizer steps: a figure that does not vary between runs),
and kdflow's ratios to the bare loop.

On a GPU (``--device cuda``, what bench/gpu.sh runs) the same steps are a few dozen kernels each,
host-bound there as well; the profile then also counts the kernel launches of a step.

Usage:
  .venv/bin/python bench/step_overhead.py [--rounds 3] [--epochs 3] [--n 4096] [--batch-size 16] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.vs_torchdistill import kdflow_batches, ops_between_steps  # noqa: E402
from kdcore.config import config_from_dict  # noqa: E402
from kdcore.data.bundle import DataBundle, Split  # noqa: E402
from kdcore.fingerprint import file_sha256  # noqa: E402
from kdcore.models import create_model  # noqa: E402
from kdcore.stages import StageEnv, TeacherSource, build_features, distill_student  # noqa: E402
from kdcore.train.checkpoint import load_model, save_model  # noqa: E402

VARIANTS = ("bare", "kdflow", "bare-cached", "kdflow-cached")
# on a GPU the bare loop's arithmetic (float32, cuDNN's own algorithm choice), where kdflow's defaults
# are bfloat16 autocast and deterministic algorithms: the comparison is then of the host work alone
GPU_AS_BARE = {"cuda": {"amp": "off", "deterministic": False}}
T, KD_WEIGHT = 4.0, 0.9


def bundle(n: int, seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)

    def split(k: int) -> Split:
        return Split(torch.randn(k, 1, 8, 8, generator=g), torch.randint(0, 10, (k,), generator=g))

    return DataBundle(
        name="synthetic-8x8",
        train=split(n),
        val=split(512),
        test=split(512),
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        input_shape=(1, 8, 8),
        fingerprint=f"synthetic-8x8-{n}-{seed}",
    )


def config(args: argparse.Namespace, cached: bool) -> dict[str, Any]:
    return {
        "name": "step-overhead",
        "data": {"name": "fashion_mnist"},  # not read: the stages get the synthetic bundle
        "teacher": {"arch": "cnn_tiny"},
        "student": {"arch": "cnn_tiny"},
        "cache": {"mode": "cached" if cached else "online"},
        "distill": {
            "losses": {"ce": {"weight": 1 - KD_WEIGHT}, "kd": {"weight": KD_WEIGHT, "temperature": T}},
            "train": {
                "max_epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": 0.01,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "scheduler": "cosine",
            },
        },
        "trainer": {"device": args.device, "num_threads": 1, "seed": 0, **GPU_AS_BARE.get(args.device, {})},
    }


def run_kdflow(args, data: DataBundle, work: Path, cached: bool) -> list[float]:
    cfg = config_from_dict(config(args, cached))
    run_dir = work / ("kdflow-cached" if cached else "kdflow")
    shutil.rmtree(run_dir, ignore_errors=True)  # no resuming from an earlier round
    env = StageEnv(cfg, data, run_dir)
    teacher_path = work / "teacher.safetensors"
    teacher = load_model(teacher_path)
    if cached:
        built = build_features(env, teacher, file_sha256(teacher_path), work / "cache")
        source = TeacherSource(env, {s: e for s, (e, _) in built.items()}, None, [])
    else:
        source = TeacherSource(env, None, teacher, [])
    res = distill_student(env, work / "student.safetensors", source)
    return [len(data.train) / h["samples_per_s"] for h in res.fit.history]


def run_bare(args, data: DataBundle, work: Path, cached: bool) -> list[float]:
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    x, y = data.train.x.to(dev), data.train.y.to(dev)
    teacher = load_model(work / "teacher.safetensors").to(dev).eval()
    student = load_model(work / "student.safetensors").to(dev)
    t_logits = None
    if cached:
        with torch.no_grad():
            t_logits = teacher(x)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    times = []
    for epoch in range(args.epochs):
        student.train()
        t0 = time.perf_counter()
        for idx in kdflow_batches(len(x), args.batch_size, 0, epoch):
            if dev.type != "cpu":  # (on the CPU the index is where it is used)
                idx = idx.to(dev)
            xb = x[idx]
            if t_logits is not None:
                tb = t_logits[idx]
            else:
                with torch.no_grad():
                    tb = teacher(xb)
            s = student(xb)
            kl = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(tb / T, dim=1), reduction="batchmean")
            loss = (1 - KD_WEIGHT) * F.cross_entropy(s, y[idx]) + KD_WEIGHT * T * T * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        sched.step()
    return times


def run(variant: str, args, data: DataBundle, work: Path) -> list[float]:
    cached = variant.endswith("-cached")
    fn = run_kdflow if variant.startswith("kdflow") else run_bare
    return fn(args, data, work, cached)


def ops_per_step(variant: str, args, data: DataBundle, work: Path) -> int:
    """The aten ops of one training step (the median over an epoch's steps)."""
    return calls_per_step(variant, args, data, work)[0]


def calls_per_step(variant: str, args, data: DataBundle, work: Path) -> tuple[int, int]:
    """(aten ops, CUDA kernel launches) of one training step, medians over an epoch's steps (no
    launches on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run(variant, argparse.Namespace(**{**vars(args), "epochs": 1}), data, work)
    events = prof.events()
    ops, _ = ops_between_steps(events)
    launches, _ = ops_between_steps(events, prefix="cudaLaunchKernel") if cuda else ([0], None)
    return int(statistics.median(ops)), int(statistics.median(launches))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n", type=int, default=4096, help="training samples")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--device", default="cpu", help="cpu, or cuda (bench/gpu.sh)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = bundle(args.n)
    work = Path(tempfile.mkdtemp(prefix="kdflow-step-overhead-"))
    try:
        torch.manual_seed(0)
        save_model(create_model("cnn_tiny", in_channels=1, num_classes=10), work / "teacher.safetensors")
        save_model(create_model("cnn_tiny", in_channels=1, num_classes=10), work / "student.safetensors")
        steps = len(kdflow_batches(args.n, args.batch_size, 0, 0))
        per_step: dict[str, list[float]] = {v: [] for v in args.variants}
        for rnd in range(args.rounds):
            order = args.variants if rnd % 2 == 0 else list(reversed(args.variants))
            for v in order:
                epochs = run(v, args, data, work)
                per_step[v] += [1e6 * s / steps for s in epochs]
                shown = ", ".join(f"{1e6 * s / steps:.0f}" for s in epochs)
                print(f"round {rnd + 1} {v:<14} us/step {shown}", flush=True)
        calls = {v: calls_per_step(v, args, data, work) for v in args.variants}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {v: statistics.median(xs) for v, xs in per_step.items()}
    cuda = args.device.startswith("cuda")
    print(
        f"\n{steps} steps an epoch, batch {args.batch_size}, 1 thread, {args.device}, "
        f"{args.rounds} rounds of {args.epochs} epochs"
    )
    print(
        "| variant | us per step (median) | aten ops per step |"
        + (" kernel launches per step |" if cuda else "")
        + " bare / variant speed |"
    )
    print("|---|---|---|" + ("---|" if cuda else "") + "---|")
    for v in args.variants:
        bare = "bare-cached" if v.endswith("-cached") else "bare"
        ratio = f"{med[bare] / med[v]:.2f}x" if bare in med else "-"
        launches = f" {calls[v][1]} |" if cuda else ""
        print(f"| {v} | {med[v]:.0f} | {calls[v][0]} |{launches} {ratio} |")


if __name__ == "__main__":
    main()
