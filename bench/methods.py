"""Every distillation method on one Fashion-MNIST workload: mean +- std test accuracy over seeds.

One teacher is trained once (kdcore's `teacher` stage) and kept under
``$KDFLOW_HOME/bench/methods/`` keyed by the data and teacher settings; its logits and the
intermediate features every method needs are cached once (the `features` stage). Then, for each
method and seed, the student goes through kdcore's own `pretrain` and `distill` stage functions
(the baseline through `baseline`) and is scored on the official test split. Every method sees the
same data, the same student initialisation per seed, the same batch order per seed and the same
epoch budget: methods with student pretraining spend part of that budget on it, so their
pretrain + distill epochs equal the baseline's epochs.

The table (mean +- std test top-1, gain over the baseline, time per training epoch) is printed and
logged to MLflow as one parent run with a child run per method.

Usage:
  .venv/bin/python bench/methods.py                     # the full run (see README for the figures)
  .venv/bin/python bench/methods.py --methods baseline kd --seeds 0   # a subset
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "1048576")  # stable allocator behaviour (see vs_torchdistill)
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "268435456")

import torch  # noqa: E402

from kdcore.config import config_from_dict  # noqa: E402
from kdcore.data import load_dataset  # noqa: E402
from kdcore.fingerprint import stable_hash  # noqa: E402
from kdcore.stages import (  # noqa: E402
    StageEnv,
    TeacherSource,
    build_features,
    classifier_val,
    distill_student,
    pretrain_student,
    train_baseline,
    train_teacher,
)
from kdcore.train.checkpoint import load_model  # noqa: E402

# The student: a 3-block CNN of ~9k parameters; the teacher: a 3-block CNN ten times its size.
STUDENT = {"arch": "cnn", "kwargs": {"channels": [16, 24, 24]}}
TEACHER = {"arch": "cnn_medium", "kwargs": {}}
# Layer pairs by module path: the CNN blocks' outputs (maps) and the pooled penultimate vector.
MAPS = [{"student": f"block{i}", "teacher": f"block{i}"} for i in (1, 2, 3)]
PENULT = [{"student": "flatten", "teacher": "flatten"}]
HINT = [{"student": "block2", "teacher": "block2"}]

CE = {"ce": {"weight": 1.0}}
VIEWS = {"policy": "shift", "num_views": 8, "pad": 2, "seed": 0}
KD = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}  # Hinton, as in the reference
KD_T2 = {"kd": {"weight": 1.0, "temperature": 2.0}}  # soft targets alone, at T = 2

# name -> (pretrain section, distill losses). Pretraining epochs come out of the distill budget.
# Feature-loss weights put each term near the cross-entropy's size at initialisation (measured on
# one batch); the papers' own weights (AT 1000, SP 3000, RKD 25/50, CRD 0.8) swamp CE on this
# 9k-parameter student and cost it 2-10 points.
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "baseline": ({}, CE),
    "kd": ({}, KD),
    "kd_t2": ({}, KD_T2),
    "dkd": ({}, {**CE, "dkd": {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 80}}),
    "fitnet": ({"method": "hint", "pairs": HINT, "epochs": 2}, KD),
    "at": ({}, {**CE, "at": {"weight": 2.0, "pairs": MAPS}}),
    "pkt": ({}, {**CE, "pkt": {"weight": 100.0, "pairs": PENULT}}),
    # Huang et al. 2022's ImageNet settings: CE + DIST (beta = gamma = 1, T 1)
    "dist": ({}, {**CE, "dist": {"weight": 1.0, "beta": 1.0, "gamma": 1.0, "temperature": 1.0}}),
    # Zheng & Yang 2024's transformed teacher matching beside CE: only the teacher softened, T 2
    "ttm": ({}, {**CE, "ttm": {"weight": 1.0, "temperature": 2.0}}),
    "rkd": (
        {},
        {
            **CE,
            "rkd": {"weight": 1.0, "distance_weight": 1.0, "angle_weight": 2.0, "angle_anchors": 32, "pairs": PENULT},
        },
    ),
    "sp": ({}, {**CE, "sp": {"weight": 300.0, "pairs": [{"student": "block3", "teacher": "block3"}]}}),
    "crd": ({}, {**CE, "crd": {"weight": 0.1, "student": "flatten", "teacher": "flatten", "num_negatives": 4096}}),
    "teacher_layers": ({"method": "teacher_layers", "partial": True, "epochs": 1}, KD),
    "teacher_layers+ce": (
        {"method": "teacher_layers", "partial": True, "freeze_copied": False, "epochs": 1, "losses": CE},
        CE,
    ),
    "teacher_layers+kd_t2": ({"method": "teacher_layers", "partial": True, "freeze_copied": False, "epochs": 1}, KD_T2),
}
# Variants tried while looking for what helps (run them with --methods NAME).
EXTRA: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "kd_t1": ({}, {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 1.0}}),
    "kd_pure_t1": ({}, {"kd": {"weight": 1.0, "temperature": 1.0}}),
    "kd_pure_t1.5": ({}, {"kd": {"weight": 1.0, "temperature": 1.5}}),
    "kd_pure_t3": ({}, {"kd": {"weight": 1.0, "temperature": 3.0}}),
    "kd_t2_mix": ({}, {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 2.0}}),
    "at_paper": ({}, {**CE, "at": {"weight": 50.0, "pairs": MAPS}}),
    "rkd_paper": ({}, {**CE, "rkd": {"weight": 1.0, "pairs": PENULT}}),
    "sp_paper": ({}, {**CE, "sp": {"weight": 3000.0, "pairs": [{"student": "block3", "teacher": "block3"}]}}),
    "crd_paper": (
        {},
        {**CE, "crd": {"weight": 0.8, "student": "flatten", "teacher": "flatten", "num_negatives": 4096}},
    ),
    "teacher_layers_frozen+kd_t2": ({"method": "teacher_layers", "partial": True, "epochs": 1}, KD_T2),
    "baseline_views": ({"views": VIEWS}, CE),
    "kd_views": ({"views": VIEWS}, KD),
    "kd_t2_views": ({"views": VIEWS}, KD_T2),
    "kd_t2+crd": (
        {},
        {**KD_T2, "crd": {"weight": 0.1, "student": "flatten", "teacher": "flatten", "num_negatives": 4096}},
    ),
    "kd_t2+pkt": ({}, {**KD_T2, "pkt": {"weight": 100.0, "pairs": PENULT}}),
    "kd_t2+at": ({}, {**KD_T2, "at": {"weight": 2.0, "pairs": MAPS}}),
    "kd_t2+sp": ({}, {**KD_T2, "sp": {"weight": 300.0, "pairs": [{"student": "block3", "teacher": "block3"}]}}),
    "baseline_lr0.1": ({"lr": 0.1}, CE),
    "baseline_lr0.025": ({"lr": 0.025}, CE),
}
ALL = {**METHODS, **EXTRA}


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "kdflow-bench-methods",
        "data": {"name": "fashion_mnist", "limit_train": args.limit_train or None},
        "teacher": {**TEACHER, "train": {"max_epochs": args.teacher_epochs, "batch_size": 128, "lr": 0.05}},
        "student": STUDENT,
        "distill": {"train": {"max_epochs": args.epochs, "batch_size": 128, "lr": 0.05}},
        "trainer": {"device": args.device, "seed": 0, "num_threads": args.threads},
    }


def method_config(
    base: dict[str, Any], name: str, seed: int, teacher_ckpt: str, epochs: int, all_teacher_paths: list[str]
) -> dict[str, Any]:
    pre, losses = ALL[name]
    raw = copy.deepcopy(base)
    raw["teacher"]["checkpoint"] = teacher_ckpt
    raw["trainer"]["seed"] = seed
    raw["cache"] = {"features": all_teacher_paths}
    pre = dict(pre)
    pre_epochs = pre.pop("epochs", 0)
    views = pre.pop("views", None)
    lr = pre.pop("lr", None)
    if lr:  # a learning-rate check of the baseline / a method (not part of the default table)
        raw["distill"]["train"]["lr"] = lr
    if views:  # teacher outputs cached per augmented view: a dedicated cache entry, logits only
        raw["cache"] = {"features": [], "views": views}
    if pre:
        pre["train"] = {"max_epochs": pre_epochs, "batch_size": 128, "lr": 0.05}
        raw["pretrain"] = pre
    raw["distill"] = {
        "losses": copy.deepcopy(losses),
        "train": {**raw["distill"]["train"], "max_epochs": epochs - pre_epochs},
    }
    raw["baseline"] = {"train": {**raw["distill"]["train"], "max_epochs": epochs}}
    return raw


def union_teacher_paths() -> list[str]:
    from kdcore.losses import build_objective

    paths: list[str] = []
    for pre, losses in ALL.values():
        if "views" in pre:
            continue
        paths += [p["teacher"] for p in pre.get("pairs", [])]
        paths += build_objective(losses).teacher_paths
    return list(dict.fromkeys(paths))


def get_teacher(home: Path, base: dict[str, Any], data, augment: str = "none") -> tuple[Path, float]:
    """Train the teacher once per (data, teacher settings); returns (checkpoint, its test top-1)."""
    spec = {"data": data.fingerprint, "teacher": base["teacher"], "seed": base.get("trainer", {}).get("seed", 0)}
    if augment != "none":
        spec["augment"] = augment
    key = stable_hash(spec)[:16]
    folder = home / "bench" / "methods" / f"teacher-{key}"
    ckpt = folder / "teacher.safetensors"
    if not ckpt.is_file():
        raw = copy.deepcopy(base)
        if augment != "none":  # every epoch a fresh seeded view of each image (kdcore's teacher.augment)
            raw["teacher"]["augment"] = {"policy": augment}
        cfg = config_from_dict(raw)
        t0 = time.perf_counter()
        res = train_teacher(StageEnv(cfg, data, folder / "work"))
        shutil.copy(res.path, ckpt)
        shutil.copy(str(res.path) + ".json", str(ckpt) + ".json")
        shutil.rmtree(folder / "work", ignore_errors=True)
        print(f"teacher trained in {time.perf_counter() - t0:.0f} s -> {ckpt}", flush=True)
    teacher = load_model(ckpt)
    acc = classifier_val(teacher, data.test.x, data.test.y)["val_top1"]
    return ckpt, acc


def run_one(raw: dict[str, Any], name: str, data, teacher, workdir: Path, entries_for) -> dict[str, Any]:
    cfg = config_from_dict(raw)
    env = StageEnv(cfg, data, workdir)
    t0 = time.perf_counter()
    if name.startswith("baseline"):  # cross-entropy alone, on the same augmented views when cache.views has any
        res = train_baseline(env)
        fits = [res.fit]
    else:
        from kdcore.losses import build_objective

        entries = entries_for(cfg, workdir / "features")
        t0 = time.perf_counter()  # the cache entries' build is timed by the caller
        pre = None
        if cfg.pretrain.method != "none":
            paths = [p.teacher for p in cfg.pretrain.pairs]
            pre_env = StageEnv(cfg, data, workdir / "pretrain")
            src = TeacherSource(pre_env, entries, None, paths) if paths else None
            pre = pretrain_student(pre_env, src, teacher)
            init = pre.path
        else:
            init = pretrain_student(StageEnv(cfg, data, workdir / "pretrain"), None, None).path
        paths = build_objective(cfg.distill.objective_spec()).teacher_paths
        res = distill_student(env, init, TeacherSource(env, entries, None, paths))
        fits = [f for f in (pre.fit if pre else None, res.fit) if f is not None]
    seconds = time.perf_counter() - t0
    n = len(data.train)
    epoch_s = [n / h["samples_per_s"] for f in fits for h in f.history]
    test = classifier_val(res.model, data.test.x.to(env.device), data.test.y.to(env.device))["val_top1"]
    return {"test_top1": test, "epoch_seconds": statistics.median(epoch_s), "epochs": len(epoch_s), "seconds": seconds}


def summarise(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    base = statistics.mean(r["test_top1"] for r in results["baseline"]) if "baseline" in results else None
    rows = []
    for name, runs in results.items():
        accs = [100 * r["test_top1"] for r in runs]
        mean = statistics.mean(accs)
        rows.append(
            {
                "method": name,
                "mean": mean,
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "gain": None if base is None else mean - 100 * base,
                "epoch_s": statistics.median(r["epoch_seconds"] for r in runs),
                "epochs": runs[0]["epochs"],
                "seeds": len(runs),
                "accs": accs,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | test top-1 % (mean ± std) | gain vs baseline (points) | s / epoch | epochs |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        gain = "—" if r["gain"] is None or r["method"] == "baseline" else f"{r['gain']:+.2f}"
        lines.append(
            f"| {r['method']} | {r['mean']:.2f} ± {r['std']:.2f} | {gain} | {r['epoch_s']:.2f} | {r['epochs']} |"
        )
    return "\n".join(lines)


def log_mlflow(home: Path, rows: list[dict[str, Any]], args: argparse.Namespace, teacher_acc: float, md: str) -> str:
    from tasks.tracking import Tracker
    from tasks.uris import default_tracking_uri

    tracker = Tracker(default_tracking_uri(home), home)
    exp = tracker.experiment_id("kdflow-bench-methods")
    parent = tracker.start_run(exp, "methods-bench", tags={"kdflow.kind": "bench"})
    tracker.log_params(parent, {"workload": vars(args), "student": STUDENT, "teacher": TEACHER})
    tracker.log_metrics(parent, {"teacher_test_top1": teacher_acc})
    for r in rows:
        child = tracker.start_run(exp, r["method"], parent=parent, tags={"kdflow.kind": "bench-method"})
        pre, losses = ALL[r["method"]]
        tracker.log_params(child, {"pretrain": json.dumps(pre), "losses": json.dumps(losses)})
        metrics = {
            "test_top1_mean": r["mean"],
            "test_top1_std": r["std"],
            "epoch_seconds": r["epoch_s"],
            **{f"test_top1_seed{i}": a for i, a in enumerate(r["accs"])},
        }
        if r["gain"] is not None:
            metrics["gain_points"] = r["gain"]
        tracker.log_metrics(child, metrics)
        tracker.end_run(child)
    tracker.log_text(parent, md, "methods.md")
    tracker.end_run(parent)
    return parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(ALL))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of every student (pretrain included)")
    ap.add_argument(
        "--limit-train", type=int, default=5000, help="training images (val: a fifth of it; 0: the full 54,000)"
    )
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument(
        "--teacher-augment",
        default="none",
        choices=["none", "shift"],
        help="random shifts while training the teacher (the students' data is never augmented)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--home", default=os.environ.get("KDFLOW_HOME", str(ROOT / ".kdflow")))
    ap.add_argument("--no-mlflow", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    home = Path(args.home).resolve()
    base = base_config(args)
    data = load_dataset(config_from_dict(base).data)
    ckpt, teacher_acc = get_teacher(home, base, data, args.teacher_augment)
    teacher = load_model(ckpt)
    paths = union_teacher_paths()
    t_params = sum(p.numel() for p in teacher.parameters())
    print(
        f"workload: fashion_mnist, {len(data.train)} train / {len(data.val)} val / {len(data.test)} test images; "
        f"teacher {TEACHER['arch']} ({t_params} params) test top-1 {100 * teacher_acc:.2f}%; "
        f"{args.epochs} epochs, seeds {args.seeds}, {args.threads} thread(s)",
        flush=True,
    )

    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="kdflow-methods-") as tmp:
        cache_cfg = config_from_dict(method_config(base, "kd", 0, str(ckpt), args.epochs, paths))
        env = StageEnv(cache_cfg, data, Path(tmp) / "features")
        from kdcore.fingerprint import file_sha256

        teacher_sha, known = file_sha256(ckpt), {}

        def entries_for(cfg, work: Path):
            """The features-cache entries for a method's config (built once per views setting)."""
            key = json.dumps(cfg.cache.model_dump(mode="json"), sort_keys=True)
            if key not in known:
                built = build_features(
                    StageEnv(cfg, data, work), teacher.to(env.device), teacher_sha, home / "bench" / "methods" / "cache"
                )
                known[key] = {split: entry for split, (entry, _) in built.items()}
            return known[key]

        entries_for(cache_cfg, Path(tmp) / "features")
        for name in args.methods:
            for seed in args.seeds:
                raw = method_config(base, name, seed, str(ckpt), args.epochs, paths)
                work = Path(tmp) / f"{name}-{seed}"
                r = run_one(raw, name, data, teacher, work, entries_for)
                shutil.rmtree(work, ignore_errors=True)
                results.setdefault(name, []).append(r)
                print(
                    f"{name:<12} seed {seed}: test top-1 {100 * r['test_top1']:.2f}%  "
                    f"{r['epoch_seconds']:.2f} s/epoch  ({r['seconds']:.0f} s)",
                    flush=True,
                )
    rows = summarise(results)
    md = table(rows)
    student_params = sum(p.numel() for p in load_model_params(base, data))
    header = (
        f"Fashion-MNIST, {len(data.train)} train images, student {STUDENT['arch']} {STUDENT['kwargs']} "
        f"({student_params} params), teacher {TEACHER['arch']} ({t_params} params, test top-1 "
        f"{100 * teacher_acc:.2f}%), {args.epochs} epochs, seeds {args.seeds}"
    )
    print("\n" + header + "\n\n" + md, flush=True)
    if not args.no_mlflow:
        run_id = log_mlflow(home, rows, args, teacher_acc, header + "\n\n" + md + "\n")
        print(f"\nMLflow parent run {run_id} (experiment kdflow-bench-methods, store under {home})")


def load_model_params(base: dict[str, Any], data):
    from kdcore.models import create_model

    return create_model(
        STUDENT["arch"], in_channels=data.in_channels, num_classes=data.num_classes, **STUDENT["kwargs"]
    ).parameters()


if __name__ == "__main__":
    main()
