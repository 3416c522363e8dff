"""kdflow KD against torchdistill KD and a bare PyTorch KD loop, side by side on Fashion-MNIST.

One teacher checkpoint (trained once with kdcore, shared with bench/methods.py), one student
architecture and one student initialisation (saved once and loaded by every variant), the same
batch order (kdflow's: a permutation seeded by (seed, epoch)), the same loss
(0.1 * CE + 0.9 * T^2 * KL, T = 4), optimiser (SGD, Nesterov momentum 0.9, weight decay 5e-4),
cosine schedule per epoch, epochs and seed. Every variant keeps the weights of its best
validation epoch (kdflow's rule) and is scored on the official test split.

Variants, each re-executed in its own subprocess with the same interpreter and the same
environment (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ fixed, OMP/MKL threads and
torch.set_num_threads fixed):

  kdflow          kdcore's distill stage (`distill_student` -> `fit`), teacher run online
  torchdistill    torchdistill 1.1.5's DistillationBox (public API), teacher run online
  bare            a minimal PyTorch loop, teacher run online
  kdflow-cached   kdcore's distill stage reading the teacher's logits from the features cache
  kdflow-cached-nhwc  kdflow-cached with `trainer.channels_last: true` (float32 throughout, NHWC
                  kernels for the cache build and the training steps; not run by default)
  kdflow-cached-bf16  kdflow-cached with `trainer.amp: bf16` and `cache.precision: amp` (bfloat16
                  autocast on the CPU for the cache build and the training steps; not run by default)
  kdflow-cached-fast  kdflow-cached-bf16 plus `trainer.channels_last: true` (not run by default)
  kdflow-nd, kdflow-cached-nd  kdflow and kdflow-cached with `trainer.deterministic: false`, as the
                  bare loop and torchdistill run: on a GPU kdflow's default picks cuDNN's
                  deterministic algorithms (bit-identical reruns), which the others do not
                  (not run by default; on the CPU the setting costs nothing, bench/README.md)
  kdflow-fp32-nd, kdflow-cached-fp32-nd  the -nd variants with `trainer.amp: off` too: the bare
                  loop's float32 arithmetic on a GPU, where kdflow's default is bfloat16 autocast
                  (not run by default; on the CPU the same as the -nd variants)
  bare-cached     the minimal loop reading precomputed teacher logits from a tensor

torchdistill has no teacher-output cache, so the online variants are the like-for-like
comparison; the cached pair shows what kdflow's cache buys against the same minimal loop.
Epoch time is training time only (no validation), reported as the median over the epochs of
every round: round 1 trains each variant for --epochs (and gives the accuracy); each later round
reruns the variants, in reversed order, for --timing-epochs more timed epochs, so that the
machine's load drifts hit every variant alike.

--profile ROWS runs each variant under torch.profiler and prints its CUDA runtime calls (kernel
launches, copies, synchronisations) and aten ops per training step (the whole run over its steps,
and those of one step alone: the median between consecutive optimizer steps, op by op), and its
ROWS ops with the most host time (a profiled run's epoch times are slower than the speed).

torchdistill lives only in the benchmark environment (see bench/README.md):
  python3 -m venv .venv-bench &&
    echo "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
      > .venv-bench/lib/python3.11/site-packages/kdflow-venv.pth && .venv-bench/bin/pip install torchdistill==1.1.5
Usage:
  .venv/bin/python bench/vs_torchdistill.py [--epochs 5] [--limit-train 5000] [--rounds 2] [--threads 1] [--device cpu]
      [--teacher-checkpoint TEACHER.safetensors] [--student-arch cnn --student-kwargs '{"channels": [16, 24, 24]}']
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
SPEED_VARIANTS = ("kdflow-cached-nhwc", "kdflow-cached-bf16", "kdflow-cached-fast")  # kdflow's CPU speed settings
ND_VARIANTS = ("kdflow-nd", "kdflow-cached-nd")  # trainer.deterministic: false, like the bare loop's
# ... and trainer.amp: off: float32 steps on a GPU too, the bare loop's and torchdistill's arithmetic
FP32_VARIANTS = ("kdflow-fp32-nd", "kdflow-cached-fp32-nd")
VARIANTS = (
    *("kdflow", "torchdistill", "bare", "kdflow-cached", "bare-cached"),
    *SPEED_VARIANTS,
    *ND_VARIANTS,
    *FP32_VARIANTS,
)
DEFAULT_VARIANTS = VARIANTS[:5]
ACCURACY_VARIANTS = ("kdflow-cached", "torchdistill", "bare-cached")  # the online twins train identically
# glibc's dynamic mmap threshold moves epoch times by up to 30 % between identical runs: pin it
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "16777216", "MALLOC_TRIM_THRESHOLD_": "67108864"}


# ----------------------------------------------------------------------------- shared set-up


def workload(args: argparse.Namespace) -> dict[str, Any]:
    from bench.methods import STUDENT, TEACHER

    teacher = TEACHER
    if args.teacher_checkpoint:  # a given teacher: its architecture from the checkpoint's sidecar
        from kdcore.train.checkpoint import read_json, sidecar_path

        spec = read_json(sidecar_path(args.teacher_checkpoint))["spec"]
        teacher = {"arch": spec["arch"], "kwargs": spec.get("kwargs") or {}}
    student = STUDENT
    if args.student_arch:
        student = {"arch": args.student_arch, "kwargs": json.loads(args.student_kwargs or "{}")}
    return {
        "name": "kdflow-bench-vs-torchdistill",
        "data": {"name": "fashion_mnist", "limit_train": args.limit_train or None},
        "teacher": {**teacher, "train": {"max_epochs": args.teacher_epochs, "batch_size": 128, "lr": 0.05}},
        "student": student,
        "distill": {
            "losses": {
                "ce": {"weight": 1 - args.kd_weight},
                "kd": {"weight": args.kd_weight, "temperature": args.temperature},
            },
            "train": {
                "max_epochs": args.epochs,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "momentum": 0.9,
                "weight_decay": 5e-4,
                "scheduler": "cosine",
            },
        },
        "trainer": {"device": args.device, "seed": args.seed, "num_threads": args.threads},
    }


def kdflow_batches(n: int, batch_size: int, seed: int, epoch: int):
    """kdflow's batch order, written out here for the other loops (checked against kdcore's)."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    batches = list(torch.randperm(n, generator=gen).split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Teacher checkpoint (trained once) and the student's initial weights, shared by every variant."""
    import torch

    from bench.methods import get_teacher
    from kdcore.config import config_from_dict
    from kdcore.data import load_dataset
    from kdcore.stages import StageEnv
    from kdcore.train.checkpoint import save_model
    from kdcore.train.loop import _batches

    base = workload(args)
    cfg = config_from_dict(base)
    data = load_dataset(cfg.data)
    if args.teacher_checkpoint:
        from kdcore.stages import classifier_val
        from kdcore.train.checkpoint import load_model

        ckpt = Path(args.teacher_checkpoint).resolve()
        teacher_acc = classifier_val(load_model(ckpt), data.test.x, data.test.y)["val_top1"]
    else:
        ckpt, teacher_acc = get_teacher(Path(args.home), base, data)
    inits = {}
    for seed in [args.seed, *args.accuracy_seeds]:  # kdflow's seeded student initialisation, per seed
        raw = dict(base, trainer={**base["trainer"], "seed": seed})
        inits[str(seed)] = str(work / f"student-init-{seed}.safetensors")
        save_model(
            StageEnv(config_from_dict(raw), data, work / "init").new_student().cpu(),
            inits[str(seed)],
            {"stage": "init"},
        )
    for epoch in range(2):
        ours = [b.tolist() for b in kdflow_batches(len(data.train), args.batch_size, args.seed, epoch)]
        assert ours == [b.tolist() for b in _batches(len(data.train), args.batch_size, args.seed, epoch)], (
            "the benchmark's batch order no longer matches kdflow's"
        )
    return {
        "teacher": str(ckpt),
        "teacher_test_top1": teacher_acc,
        "inits": inits,
        "n_train": len(data.train),
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- variants


def _data(args):
    from kdcore.config import config_from_dict
    from kdcore.data import load_dataset

    return load_dataset(config_from_dict(workload(args)).data)


def _kd_loss(s_logits, t_logits, y, args):
    import torch.nn.functional as F

    t = args.temperature
    kl = F.kl_div(F.log_softmax(s_logits / t, dim=1), F.softmax(t_logits / t, dim=1), reduction="batchmean")
    return (1 - args.kd_weight) * F.cross_entropy(s_logits, y) + args.kd_weight * t * t * kl


def _accuracy(model, x, y, batch_size=1024) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / len(x)


class BestKeeper:
    """kdflow's rule: keep the weights of the first epoch with the highest validation top-1."""

    def __init__(self):
        self.best, self.state = None, None

    def update(self, model, value: float) -> None:
        if self.best is None or value > self.best:
            self.best = value
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_kdflow(
    args,
    prep,
    cached: bool,
    bf16: bool = False,
    channels_last: bool = False,
    deterministic: bool = True,
    fp32: bool = False,
) -> dict[str, Any]:
    from kdcore.config import config_from_dict
    from kdcore.fingerprint import file_sha256
    from kdcore.stages import StageEnv, TeacherSource, build_features, distill_student
    from kdcore.train.checkpoint import load_model

    raw = workload(args)
    raw["teacher"]["checkpoint"] = prep["teacher"]
    raw["cache"] = {"mode": "cached" if cached else "online"}
    if bf16:  # bfloat16 autocast for the training steps and the cache build's teacher forward
        raw["trainer"]["amp"] = "bf16"
        raw["cache"]["precision"] = "amp"
    if channels_last:
        raw["trainer"]["channels_last"] = True
    raw["trainer"]["deterministic"] = deterministic
    if fp32:  # no autocast: on a GPU kdflow's default is bfloat16 autocast, the bare loop's float32
        raw["trainer"]["amp"] = "off"
    cfg = config_from_dict(raw)
    data = _data(args)
    suffix = (
        ("-bf16" if bf16 else "")
        + ("-nhwc" if channels_last else "")
        + ("-fp32" if fp32 else "")
        + ("" if deterministic else "-nd")
    )
    work = Path(args.workdir) / (("kdflow-cached" if cached else "kdflow") + suffix)
    shutil.rmtree(work, ignore_errors=True)  # a fresh run every time: no resuming from an earlier round
    env = StageEnv(cfg, data, work)
    teacher = load_model(prep["teacher"]).to(env.device)
    build_s = 0.0
    if cached:
        t0 = time.perf_counter()
        built = build_features(env, teacher, file_sha256(prep["teacher"]), Path(args.workdir) / "cache")
        build_s = time.perf_counter() - t0
        source = TeacherSource(env, {s: e for s, (e, _) in built.items()}, None, [])
    else:
        source = TeacherSource(env, None, teacher, [])
    t0 = time.perf_counter()
    res = distill_student(env, Path(prep["init"]), source)
    distill_s = time.perf_counter() - t0
    n = len(data.train)
    rates = [h["samples_per_s"] for h in res.fit.history]
    x, y = data.test.x.to(env.device), data.test.y.to(env.device)
    return {
        "epoch_seconds": [n / r for r in rates],
        "images_per_s": rates,
        "test_top1": _accuracy(res.model, x, y),
        "val_top1": [h["val_top1"] for h in res.fit.history],
        "cache_build_s": build_s,  # the features (cache) build, train and val splits
        "distill_s": distill_s,  # the whole distill call, validation and checkpoints included
    }


def run_bare(args, prep, cached: bool) -> dict[str, Any]:
    import torch

    from kdcore.train.checkpoint import load_model
    from kdcore.train.device import resolve_device

    dev = resolve_device(args.device)
    data = _data(args)
    x, y = data.train.x.to(dev), data.train.y.to(dev)
    xv, yv = data.val.x.to(dev), data.val.y.to(dev)
    teacher = load_model(prep["teacher"]).to(dev).eval()
    student = load_model(prep["init"]).to(dev)
    t_logits = None
    if cached:
        with torch.no_grad():
            t_logits = torch.cat([teacher(x[i : i + 1024]) for i in range(0, len(x), 1024)])
    opt = torch.optim.SGD(student.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    keep, times, rates, vals = BestKeeper(), [], [], []
    for epoch in range(args.epochs):
        student.train()
        n_seen = 0
        t0 = time.perf_counter()
        for idx in kdflow_batches(len(x), args.batch_size, args.seed, epoch):
            idx = idx.to(dev)
            xb = x[idx]
            if cached:
                tb = t_logits[idx]
            else:
                with torch.no_grad():
                    tb = teacher(xb)
            loss = _kd_loss(student(xb), tb, y[idx], args)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n_seen += len(idx)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        sched.step()
        times.append(dt)
        rates.append(n_seen / dt)
        vals.append(_accuracy(student, xv, yv))
        keep.update(student, vals[-1])
    student.load_state_dict(keep.state)
    return {
        "epoch_seconds": times,
        "images_per_s": rates,
        "val_top1": vals,
        "test_top1": _accuracy(student, data.test.x.to(dev), data.test.y.to(dev)),
    }


class KdflowOrderSampler:
    """A sampler giving, at its k-th iteration, kdflow's batch order of epoch k (for torchdistill)."""

    def __init__(self, dataset, seed: int, batch_size: int):
        self.n, self.seed, self.batch_size, self.epoch = len(dataset), seed, batch_size, 0

    def __iter__(self):
        order = [i for b in kdflow_batches(self.n, self.batch_size, self.seed, self.epoch) for i in b.tolist()]
        self.epoch += 1
        return iter(order)

    def __len__(self) -> int:
        return self.n


def run_torchdistill(args, prep) -> dict[str, Any]:
    import torch
    from torch.utils.data import TensorDataset
    from torchdistill.core.distillation import get_distillation_box

    from kdcore.train.checkpoint import load_model
    from kdcore.train.device import resolve_device

    dev = resolve_device(args.device)
    data = _data(args)
    teacher = load_model(prep["teacher"]).to(dev).eval()
    student = load_model(prep["init"]).to(dev)
    dataset_dict = {"train": TensorDataset(data.train.x, data.train.y)}
    model_cfg = {
        "forward_proc": "forward_batch_only",
        "sequential": [],
        "wrapper": None,
        "forward_hook": {"input": [], "output": []},
    }
    train_config = {
        "num_epochs": args.epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {
                "class_or_func": KdflowOrderSampler,
                "kwargs": {"seed": args.seed, "batch_size": args.batch_size},
            },
            "kwargs": {"batch_size": args.batch_size, "num_workers": 0, "drop_last": False},
        },
        "teacher": {**model_cfg, "requires_grad": False},
        "student": {**model_cfg, "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": args.epochs}, "scheduling_step": 0},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": ".",
                                "student_module_io": "output",
                                "teacher_module_path": ".",
                                "teacher_module_io": "output",
                                "temperature": args.temperature,
                                "alpha": 1 - args.kd_weight,
                                "beta": args.kd_weight,
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }
    box = get_distillation_box(teacher, student, dataset_dict, train_config, dev, None, False, 1.0)
    xv, yv = data.val.x.to(dev), data.val.y.to(dev)
    keep, times, rates, vals = BestKeeper(), [], [], []
    for epoch in range(args.epochs):
        box.pre_epoch_process(epoch=epoch)
        n_seen = 0
        t0 = time.perf_counter()
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(dev), targets.to(dev)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss)
            n_seen += len(targets)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        box.post_epoch_process()
        times.append(dt)
        rates.append(n_seen / dt)
        vals.append(_accuracy(box.student_model, xv, yv))
        keep.update(box.student_model, vals[-1])
    box.student_model.load_state_dict(keep.state)
    return {
        "epoch_seconds": times,
        "images_per_s": rates,
        "val_top1": vals,
        "test_top1": _accuracy(box.student_model, data.test.x.to(dev), data.test.y.to(dev)),
    }


def profiled(runner, args, prep) -> dict[str, Any]:
    """``runner()`` under torch.profiler: prints the calls per training step that a GPU pays for
    (kernel launches, copies, synchronisations) and the ops with the most host time, the whole
    variant's run (validation and the test pass included) divided by its training steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        out = runner()
    steps = args.epochs * len(kdflow_batches(prep["n_train"], args.batch_size, args.seed, 0))
    events = prof.key_averages()
    calls = {e.key: e.count for e in events}
    runtime = sorted((k, n) for k, n in calls.items() if k.startswith("cu") and not k.startswith("cudnn"))
    print(
        f"profile {args.variant}: {steps} training steps; per step "
        + (", ".join(f"{k} {n / steps:.1f}" for k, n in runtime) or "(no CUDA runtime calls)")
        + f"; aten ops {sum(n for k, n in calls.items() if k.startswith('aten::')) / steps:.1f}",
        flush=True,
    )
    counts, ops = ops_between_steps(prof.events())
    if counts:
        print(
            f"profile {args.variant}: aten ops per training step, median of {len(counts)} (between "
            f"optimizer steps, the epoch's end excluded by the median): {statistics.median(counts):.0f}; "
            f"a median step's ops: {', '.join(f'{k} {n}' for k, n in ops.most_common())}",
            flush=True,
        )
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.profile), flush=True)
    return out


def ops_between_steps(events, prefix: str = "aten::") -> tuple[list[int], Counter[str]]:
    """The aten ops (nested ones included; or the events named ``prefix...``, e.g. CUDA kernel
    launches) that start between one optimizer step's end and the next's, for every pair of
    consecutive steps: what one training step issues (data fetch, forward, loss, backward, the
    optimizer), and the op counts of one step with the median total."""
    import bisect

    ends = sorted(e.time_range.end for e in events if e.name.startswith("Optimizer.step#"))
    aten = sorted((e.time_range.start, e.name) for e in events if e.name.startswith(prefix))
    starts = [t for t, _ in aten]
    spans = [(bisect.bisect_left(starts, a), bisect.bisect_left(starts, b)) for a, b in zip(ends, ends[1:])]
    counts = [j - i for i, j in spans]
    if not counts:
        return [], Counter()
    median = sorted(counts)[len(counts) // 2]
    i, j = spans[counts.index(median)]
    return counts, Counter(name for _, name in aten[i:j])


def run_variant(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    prep = json.loads(Path(args.workdir, "prep.json").read_text())
    prep["init"] = prep["inits"][str(args.seed)]
    runner = {
        "kdflow": lambda: run_kdflow(args, prep, cached=False),
        "kdflow-cached": lambda: run_kdflow(args, prep, cached=True),
        "kdflow-cached-nhwc": lambda: run_kdflow(args, prep, cached=True, channels_last=True),
        "kdflow-cached-bf16": lambda: run_kdflow(args, prep, cached=True, bf16=True),
        "kdflow-cached-fast": lambda: run_kdflow(args, prep, cached=True, bf16=True, channels_last=True),
        "kdflow-nd": lambda: run_kdflow(args, prep, cached=False, deterministic=False),
        "kdflow-cached-nd": lambda: run_kdflow(args, prep, cached=True, deterministic=False),
        "kdflow-fp32-nd": lambda: run_kdflow(args, prep, cached=False, deterministic=False, fp32=True),
        "kdflow-cached-fp32-nd": lambda: run_kdflow(args, prep, cached=True, deterministic=False, fp32=True),
        "bare": lambda: run_bare(args, prep, cached=False),
        "bare-cached": lambda: run_bare(args, prep, cached=True),
        "torchdistill": lambda: run_torchdistill(args, prep),
    }[args.variant]
    out = profiled(runner, args, prep) if args.profile else runner()
    out.update(
        variant=args.variant,
        threads=torch.get_num_threads(),
        env={k: os.environ.get(k) for k in (*ALLOCATOR_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    )
    Path(args.workdir, f"{args.variant}-{args.seed}.json").write_text(json.dumps(out))


# ----------------------------------------------------------------------------- driver


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ALLOCATOR_ENV)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def report(results: dict[str, dict[str, Any]], prep: dict[str, Any], args) -> str:
    def med(r, key):
        return statistics.median(r[key])

    lines = [
        f"Fashion-MNIST, {prep['n_train']} train images, {args.epochs} epochs, batch {args.batch_size}, "
        f"seed {args.seed}, {args.threads} thread(s), device {args.device}; teacher test top-1 "
        f"{100 * prep['teacher_test_top1']:.2f}%; timing: median of {args.epochs} + "
        f"{(args.rounds - 1) * args.timing_epochs} epochs over {args.rounds} round(s)",
        "",
        "| variant | test top-1 % | epoch s (median) | images/s (median) | timed epochs |",
        "|---|---|---|---|---|",
    ]
    for v, r in results.items():
        lines.append(
            f"| {v} | {100 * r['test_top1']:.2f} | {med(r, 'epoch_seconds'):.3f} | "
            f"{med(r, 'images_per_s'):.0f} | {len(r['epoch_seconds'])} |"
        )
    lines.append("")
    seeded = {v: r["seed_top1"] for v, r in results.items() if "seed_top1" in r}
    if seeded:
        pct = {v: [100 * a for a in s.values()] for v, s in seeded.items()}
        lines.append(
            f"test top-1 over seeds {', '.join(next(iter(seeded.values())))} (mean ± std): "
            + "; ".join(f"{v} {statistics.mean(p):.2f} ± {statistics.stdev(p):.2f}" for v, p in pct.items())
        )
        lines.append("")

    def ratio(a, b):
        if a in results and b in results:
            ra, rb = med(results[a], "images_per_s"), med(results[b], "images_per_s")
            acc = 100 * (results[a]["test_top1"] - results[b]["test_top1"])
            lines.append(f"{a} / {b}: throughput x{ra / rb:.3f}, accuracy {acc:+.2f} points")

    ratio("kdflow", "torchdistill")
    ratio("kdflow", "bare")
    ratio("torchdistill", "bare")
    ratio("kdflow-cached", "bare-cached")
    ratio("kdflow-cached", "torchdistill")
    for fast in SPEED_VARIANTS:
        ratio(fast, "kdflow-cached")
    ratio("kdflow-nd", "bare")
    ratio("kdflow-cached-nd", "bare-cached")
    ratio("kdflow-nd", "kdflow")
    ratio("kdflow-fp32-nd", "bare")
    ratio("kdflow-cached-fp32-nd", "bare-cached")
    for ours_v in ("kdflow-cached", *SPEED_VARIANTS):
        if ours_v not in results or "torchdistill" not in results:
            continue
        k, td = results[ours_v], results["torchdistill"]  # round 1: the --epochs that gave the accuracy
        ours = k["cache_build_s"] + k["distill_s"]
        theirs = sum(td["epoch_seconds"][: args.epochs])
        lines.append(
            f"time to a distilled student ({args.epochs} epochs): {ours_v} {ours:.1f} s (cache build "
            f"{k['cache_build_s']:.1f} + distill {k['distill_s']:.1f}, validation included) vs torchdistill "
            f"{theirs:.1f} s (training epochs only): x{ours / theirs:.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS)
    ap.add_argument("--epochs", type=int, default=5, help="training epochs (accuracy is measured after them)")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds (the first also measures accuracy)")
    ap.add_argument("--timing-epochs", type=int, default=3, help="epochs of each later timing round")
    ap.add_argument("--limit-train", type=int, default=5000, help="training images (0: the full 54,000)")
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument(
        "--teacher-checkpoint",
        default=None,
        help="use this teacher (a kdflow .safetensors with its .json sidecar, e.g. a pipeline's teacher) "
        "instead of training bench/methods.py's",
    )
    ap.add_argument("--student-arch", default=None, help="student architecture (default: bench/methods.py's)")
    ap.add_argument(
        "--student-kwargs", default=None, help="the student's kwargs as JSON, e.g. '{\"channels\": [16, 24]}'"
    )
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--kd-weight", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--accuracy-seeds",
        type=int,
        nargs="*",
        default=[1, 2],
        help="further seeds trained for the accuracy comparison only (kdflow, torchdistill, bare)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--home", default=os.environ.get("KDFLOW_HOME", str(ROOT / ".kdflow")))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # set in the re-executed children
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="run every variant under torch.profiler and print its calls per step and its ROWS ops with "
        "the most host time (figures of a profiled run: its epoch times are not the speed)",
    )
    args = ap.parse_args()
    if args.variant:
        return run_variant(args)

    import tempfile

    work = Path(args.workdir or tempfile.mkdtemp(prefix="kdflow-vs-td-"))
    work.mkdir(parents=True, exist_ok=True)
    prep = prepare(args, work)
    (work / "prep.json").write_text(json.dumps(prep))
    # torchdistill runs from .venv-bench (make bench-env), else from this interpreter if it has it
    python = str(BENCH_PYTHON) if BENCH_PYTHON.exists() else sys.executable
    td_here = importlib.util.find_spec("torchdistill") is not None
    if not BENCH_PYTHON.exists() and not td_here and "torchdistill" in args.variants:
        print("note: neither .venv-bench nor this interpreter has torchdistill: skipping it", flush=True)
        args.variants = [v for v in args.variants if v != "torchdistill"]
    results: dict[str, dict[str, Any]] = {}
    for rnd in range(args.rounds):
        # round 1 trains every variant for --epochs (accuracy and timing); later rounds, in reversed or
        # rotated order, only add timed epochs, so slow drifts of the machine's load hit every variant alike
        order = list(args.variants) if rnd % 2 == 0 else list(reversed(args.variants))
        epochs = args.epochs if rnd == 0 else args.timing_epochs
        for v in order:
            cmd = [
                python,
                str(Path(__file__).resolve()),
                "--variant",
                v,
                "--workdir",
                str(work),
                *_args_for_child(args, epochs),
            ]
            t0 = time.perf_counter()
            subprocess.run(cmd, env=child_env(args.threads), check=True)
            r = json.loads((work / f"{v}-{args.seed}.json").read_text())
            if rnd == 0:
                results[v] = r
            else:
                for key in ("epoch_seconds", "images_per_s"):
                    results[v][key] = results[v][key] + r[key]
            print(
                f"round {rnd + 1} {v:<14} test top-1 {100 * r['test_top1']:.2f}%  epochs "
                f"{', '.join(f'{s:.2f}' for s in r['epoch_seconds'])} s  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    for seed in args.accuracy_seeds:  # accuracy only: the same comparison from other seeds
        for v in [v for v in args.variants if v in ACCURACY_VARIANTS]:
            cmd = [
                python,
                str(Path(__file__).resolve()),
                "--variant",
                v,
                "--workdir",
                str(work),
                *_args_for_child(args, args.epochs, seed),
            ]
            subprocess.run(cmd, env=child_env(args.threads), check=True)
            r = json.loads((work / f"{v}-{seed}.json").read_text())
            results[v].setdefault("seed_top1", {str(args.seed): results[v]["test_top1"]})[str(seed)] = r["test_top1"]
            print(f"seed {seed} {v:<14} test top-1 {100 * r['test_top1']:.2f}%", flush=True)
    text = report(results, prep, args)
    print("\n" + text, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"prep": prep, "results": results, "report": text}, indent=2))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


def _args_for_child(args, epochs: int, seed: int | None = None) -> list[str]:
    out = ["--epochs", str(epochs), "--seed", str(args.seed if seed is None else seed)]
    for key in (
        "limit_train",
        "teacher_epochs",
        "batch_size",
        "lr",
        "temperature",
        "kd_weight",
        "threads",
        "device",
        "home",
        "teacher_checkpoint",
        "student_arch",
        "student_kwargs",
        "profile",
    ):
        if getattr(args, key) is not None:
            out += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return out


if __name__ == "__main__":
    main()
