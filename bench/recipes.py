"""Student recipes on issue 12's workload, each against a baseline trained with the same settings.

bench/full_fashion.py measures the workload as the issue states it (SGD lr 0.01, 10 epochs). This
script asks the question behind its targets: does distillation from the cached resnet14 teacher
beat a plain-trained student once the student is trained well (a higher learning rate, a longer
schedule)? Each variant runs kdcore's stages in this process (no Prefect / MLflow): the cache build
and the distillation, or the baseline (cross-entropy alone), on the full Fashion-MNIST
(54,000 / 6,000 / the official 10,000 test), the 9k-parameter `cnn` student, batch 128, SGD with
Nesterov momentum 0.9, weight decay 5e-4, cosine schedule; the best validation epoch's weights are
scored on the test split. It prints one JSON line per variant.

The teacher is a checkpoint of configs/full_fashion.yaml's teacher stage (``--teacher-checkpoint``,
e.g. ``HOME/runs/teacher/<fingerprint>/teacher.safetensors`` of a full_fashion.py home).

Usage:
  python bench/recipes.py --teacher-checkpoint PATH [--variants base_lr01 kd_t1_lr05 ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KD_T4 = {"temperature": 4.0, "losses": {"kd": {"weight": 0.9}, "ce": {"weight": 0.1}}}
KD_T1 = {"temperature": 1.0, "losses": {"kd": {"weight": 1.0}}}

# name -> (baseline?, distill section laid over the base's)
VARIANTS: dict[str, tuple[bool, dict[str, Any]]] = {
    "base_lr01": (True, {}),
    "base_lr05": (True, {"train": {"lr": 0.05}}),
    "kd_t4_lr05": (False, {**KD_T4, "train": {"lr": 0.05}}),
    "kd_t1_lr05": (False, {**KD_T1, "train": {"lr": 0.05}}),
    "base_lr05_e30": (True, {"train": {"lr": 0.05, "max_epochs": 30}}),
    "kd_t1_lr05_e30": (False, {**KD_T1, "train": {"lr": 0.05, "max_epochs": 30}}),
}


def base_config(teacher: Path, threads: int) -> dict[str, Any]:
    return {
        "name": "recipes",
        "data": {"name": "fashion_mnist", "val_fraction": 0.1},
        "teacher": {"arch": "resnet14", "kwargs": {}, "checkpoint": str(teacher)},
        "student": {"arch": "cnn", "kwargs": {"channels": [16, 24, 24]}},
        "distill": {"train": {"max_epochs": 10, "batch_size": 128, "lr": 0.01}},
        "trainer": {"device": "cpu", "seed": 0, "num_threads": threads},
    }


def _lay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "losses":
            _lay(base[key], value)
        else:
            base[key] = value
    return base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-checkpoint", type=Path, required=True)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=2, help="torch threads (the weights depend on it, bit for bit)")
    p.add_argument("--home", type=Path, default=Path("/tmp/kdflow-recipes"), help="cache entries and stage folders")
    args = p.parse_args()

    import methods as M  # bench/methods.py: run_one trains a baseline or distils from cache entries

    from kdcore.config import config_from_dict
    from kdcore.data import load_dataset
    from kdcore.stages import StageEnv, build_features, classifier_val
    from kdcore.train.checkpoint import load_model

    teacher = load_model(args.teacher_checkpoint)
    data = load_dataset(config_from_dict(base_config(args.teacher_checkpoint, args.threads)).data)
    teacher_test = classifier_val(teacher, data.test.x, data.test.y)["val_top1"]
    tag = f"{args.teacher_checkpoint.name}-{args.teacher_checkpoint.stat().st_size}"
    # every variant reads the same cache entries (no views): built (or found) once, timed, up front
    t0 = time.perf_counter()
    first = config_from_dict(base_config(args.teacher_checkpoint, args.threads))
    built = build_features(StageEnv(first, data, args.home / "features"), teacher, tag, args.home / "cache")
    entries = {split: entry for split, (entry, _) in built.items()}
    cache_s = time.perf_counter() - t0

    def entries_for(cfg, work: Path):
        return entries

    for name in args.variants:
        is_baseline, distill = VARIANTS[name]
        raw = base_config(args.teacher_checkpoint, args.threads)
        _lay(raw["distill"], copy.deepcopy(distill))
        raw["baseline"] = {"train": raw["distill"]["train"]}
        cfg = config_from_dict(raw)
        work = args.home / "runs" / name
        r = M.run_one(raw, "baseline" if is_baseline else name, data, teacher, work, entries_for)
        test, seconds = r["test_top1"], r["seconds"]
        print(
            json.dumps(
                {
                    "variant": name,
                    "test_top1": round(100 * test, 2),
                    "teacher_test_top1": round(100 * teacher_test, 2),
                    "of_teacher_pct": round(100 * test / teacher_test, 1),
                    "epochs": cfg.distill.train.max_epochs,
                    "lr": cfg.distill.train.lr,
                    "cache_build_s": None if is_baseline else round(cache_s, 1),  # once, before the first
                    "seconds": round(seconds, 1),
                    "threads": args.threads,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
