"""Distilling from the teacher's own earlier epochs: an early-stopped teacher, or a route of them.

Two ideas for a student that cannot fit its final teacher (bench/README.md, recipes.py):
- an earlier checkpoint of the teacher as the teacher (Cho & Hariharan, ICCV 2019: early-stopped
  teachers, whose outputs are less sharp, taught small students better than converged ones);
- a *route* of checkpoints (Jin et al., ICCV 2019, "route constrained optimization"): the student
  follows the teacher's training path, distilled from an early checkpoint first and from later ones
  as it learns, so that each target is within its reach.

The teacher is recipes.py's default (resnet14, 20 epochs, lr 0.05, ``teacher.augment: crop_flip``,
seed 0) trained here once with ``trainer.keep_checkpoints: 20`` (every epoch's weights kept, under
HOME/bench/route-teacher/checkpoints/epoch-NNNN/); its last epoch is the 93.74 % teacher of
recipes.py, bit for bit (the script checks the sha256 when ``--expect-sha256`` is given). Each run
is recipes.py's ``kd_t2_lr05`` (KD alone at T 2, lr 0.05, 10 epochs, the 9k student, 2 threads)
with another teacher; a route switches the cached teacher outputs the student reads at the start
of the epochs it names (through the stage's callbacks). One JSON line per run.

Usage:
  python bench/teacher_route.py --home /tmp/kdrec --seed 0 --route 19@0            # the final teacher
  python bench/teacher_route.py --home /tmp/kdrec --route 14@0                      # an earlier one
  python bench/teacher_route.py --home /tmp/kdrec --route 5@0 10@3 13@6 19@8       # a route
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

EPOCHS = 20  # the teacher's
STUDENT_EPOCHS = 10  # recipes.py's kd_t2_lr05


def parse_route(items: list[str]) -> list[tuple[int, int]]:
    """``["5@0", "10@3"]`` -> [(teacher epoch 5, from student epoch 0), (10, 3)], checked."""
    route = []
    for item in items:
        teacher, sep, start = item.partition("@")
        if not sep or not teacher.isdigit() or not start.isdigit():
            raise SystemExit(f"--route: {item!r} is not TEACHER_EPOCH@STUDENT_EPOCH (e.g. 10@3)")
        route.append((int(teacher), int(start)))
    starts = [s for _, s in route]
    if starts[0] != 0 or starts != sorted(set(starts)):
        raise SystemExit(f"--route: the student epochs must start at 0 and rise, got {starts}")
    if starts[-1] >= STUDENT_EPOCHS:
        raise SystemExit(f"--route: the student trains epochs 0..{STUDENT_EPOCHS - 1}, got {starts[-1]}")
    if any(not 0 <= t < EPOCHS for t, _ in route):
        raise SystemExit(f"--route: teacher epochs are 0..{EPOCHS - 1} (0: after the first epoch)")
    return route


def follow_route(source, anchors: list[tuple[int, dict]]):
    """Training callbacks that, at each epoch's start, point ``source`` (a TeacherSource) at the cache
    entries of the last anchor ``(from student epoch, entries)`` whose epoch has come."""
    from kdcore.train import TrainCallbacks

    class FollowRoute(TrainCallbacks):
        def on_epoch_start(self, epoch: int) -> None:
            source.entries = [entries for start, entries in anchors if start <= epoch][-1]

    return FollowRoute()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--route", nargs="+", required=True, help="TEACHER_EPOCH@STUDENT_EPOCH ... (0-based)")
    p.add_argument("--seed", type=int, default=0, help="the student's trainer.seed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--home", type=Path, default=Path("/tmp/kdflow-recipes"), help="teacher, cache and run folders")
    p.add_argument("--expect-sha256", help="the last epoch's weights must have this sha256 (the recipes.py teacher)")
    args = p.parse_args()
    route = parse_route(args.route)

    import recipes as R

    from kdcore.config import config_from_dict
    from kdcore.data import load_dataset
    from kdcore.fingerprint import file_sha256
    from kdcore.stages import StageEnv, build_features, classifier_val, distill_student, pretrain_student
    from kdcore.stages.distill import TeacherSource
    from kdcore.stages.teacher import train_teacher
    from kdcore.train.checkpoint import load_teacher

    folder = args.home / "bench" / "route-teacher"
    kept = folder / "checkpoints"
    raw = R.base_config(Path("unused"), args.threads, 0)
    raw["teacher"] = {
        "arch": "resnet14",
        "kwargs": {},
        "train": {"max_epochs": EPOCHS, "batch_size": 128, "lr": 0.05},
        "augment": {"policy": "crop_flip"},
    }
    raw["trainer"]["keep_checkpoints"] = EPOCHS
    cfg = config_from_dict(raw)
    data = load_dataset(cfg.data)
    last = kept / f"epoch-{EPOCHS - 1:04d}" / "model.safetensors"
    if not last.is_file():
        t0 = time.perf_counter()
        train_teacher(StageEnv(cfg, data, folder))
        print(f"teacher trained in {time.perf_counter() - t0:.0f} s, every epoch kept in {kept}", flush=True)
    if args.expect_sha256 and file_sha256(last) != args.expect_sha256:
        raise SystemExit(f"{last}: sha256 {file_sha256(last)}, expected {args.expect_sha256}")

    raw = R.variant_config("kd_t2_lr05", last, args.threads, args.seed)
    cfg = config_from_dict(raw)
    label = "route-" + "-".join(f"{t}at{s}" for t, s in route)
    work = args.home / "runs" / (label if args.seed == 0 else f"{label}-seed{args.seed}")
    shutil.rmtree(work, ignore_errors=True)
    anchors = []  # (from student epoch, cache entries, the checkpoint's test top-1)
    t0 = time.perf_counter()
    for epoch, start in route:
        path = kept / f"epoch-{epoch:04d}" / "model.safetensors"
        teacher = load_teacher(path, "resnet14", {}, data.input_shape[0], data.num_classes)
        acc = classifier_val(teacher, data.test.x, data.test.y)["val_top1"]
        built = build_features(StageEnv(cfg, data, work / "features"), teacher, file_sha256(path), args.home / "cache")
        anchors.append((start, {split: entry for split, (entry, _) in built.items()}, acc))
    anchors_s = time.perf_counter() - t0  # loading, scoring and caching the route's checkpoints

    env = StageEnv(cfg, data, work)
    source = TeacherSource(env, anchors[0][1], None, [])
    env.callbacks = follow_route(source, [(start, entries) for start, entries, _ in anchors])
    t0 = time.perf_counter()
    init = pretrain_student(StageEnv(cfg, data, work / "pretrain"), None, None).path
    res = distill_student(env, init, source)
    seconds = time.perf_counter() - t0
    test = classifier_val(res.model, data.test.x, data.test.y)["val_top1"]
    print(
        json.dumps(
            {
                "variant": "kd_t2_lr05 from " + " ".join(args.route),
                "test_top1": round(100 * test, 2),
                "route": [
                    {"teacher_epoch": e, "from_student_epoch": s, "teacher_test_top1": round(100 * a, 2)}
                    for (e, s), (_, _, a) in zip(route, anchors)
                ],
                "anchors_s": round(anchors_s, 1),
                "seconds": round(seconds, 1),
                "threads": args.threads,
                "seed": args.seed,
                "run": str(work),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
