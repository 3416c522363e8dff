"""A short function-matching trial on a Fashion-MNIST subset: which view policy, temperature and
mixing make a KD-only student learn from cached views, against plain KD and the baseline.

The teacher (`cnn_medium`, 10 epochs) is trained once by bench/methods.py's `get_teacher` and kept
under ``$KDFLOW_HOME/bench/methods/``; each variant builds (or reuses) its cache entry in
``HOME/cache`` and trains the `cnn` [16, 24, 24] student through kdcore's `distill` stage (the
baseline through `baseline`), one seed, then prints one JSON line with its test top-1. The figures
are one seed on a shared machine: a smoke check that the recipe trains, not a measurement; the
full-size figures come from bench/full_fashion.py.

Usage:
  .venv/bin/python bench/function_matching.py HOME EPOCHS VARIANT[,VARIANT...] NUM_VIEWS
  .venv/bin/python bench/function_matching.py /tmp/fm 15 fm_t1,fm_t4,baseline,kd_t4 8
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import methods as M  # noqa: E402

from kdcore.config import config_from_dict  # noqa: E402
from kdcore.data import load_dataset  # noqa: E402
from kdcore.stages import (  # noqa: E402
    StageEnv,
    TeacherSource,
    build_features,
    classifier_val,
    distill_student,
    pretrain_student,
    train_baseline,
)
from kdcore.train.checkpoint import load_model  # noqa: E402


def variants(num_views: int) -> dict:
    rrc = {"policy": "random_resized_crop", "num_views": num_views, "scale": [0.35, 1.0], "seed": 0}
    kd1, kd4 = {"kd": {"weight": 1.0, "temperature": 1.0}}, {"kd": {"weight": 1.0, "temperature": 4.0}}
    return {
        "baseline": (None, {"ce": {"weight": 1.0}}),
        "kd_t4": (None, {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}}),
        "fm_t1": (rrc, kd1),
        "fm_t4": (rrc, kd4),
        "fm_mixup_t1": ({**rrc, "mix": "mixup", "mix_alpha": 1.0}, kd1),
        "fm_mixup_t4": ({**rrc, "mix": "mixup", "mix_alpha": 1.0}, kd4),
        "fm_cutmix_t1": ({**rrc, "mix": "cutmix", "mix_alpha": 1.0}, kd1),
        "fm_crop_flip_t1": ({"policy": "crop_flip", "num_views": num_views, "pad": 2}, kd1),
    }


def main() -> None:
    home, epochs, names, num_views = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4])
    base = {
        "name": "fm-trial",
        "data": {"name": "fashion_mnist", "limit_train": 5000},
        "teacher": {"arch": "cnn_medium", "kwargs": {}, "train": {"max_epochs": 10, "batch_size": 128, "lr": 0.05}},
        "student": {"arch": "cnn", "kwargs": {"channels": [16, 24, 24]}},
        "distill": {"train": {"max_epochs": epochs, "batch_size": 128, "lr": 0.05}},
        "trainer": {"device": "cpu", "seed": 0, "num_threads": 2},
    }
    data = load_dataset(config_from_dict(base).data)
    ckpt, tacc = M.get_teacher(home, base, data)
    print(f"teacher test top1 {tacc:.4f}", flush=True)
    teacher = load_model(ckpt)
    table = variants(num_views)
    for name in names:
        views, losses = table[name]
        raw = copy.deepcopy(base)
        raw["teacher"]["checkpoint"] = str(ckpt)
        raw["cache"] = {"views": views or {}, "dtype": "float16"}
        raw["distill"]["losses"] = losses
        raw["baseline"] = {"train": raw["distill"]["train"]}
        cfg = config_from_dict(raw)
        work = home / "runs" / name
        env = StageEnv(cfg, data, work)
        t0 = time.perf_counter()
        cache_s = 0.0
        if name == "baseline":
            res = train_baseline(env)
        else:
            teacher_id = "sha-" + ckpt.name + str(ckpt.stat().st_size)
            built = build_features(env, teacher, teacher_id, home / "cache")
            entries = {s: e for s, (e, _) in built.items()}
            cache_s = time.perf_counter() - t0
            init = pretrain_student(StageEnv(cfg, data, work / "pre"), None, None).path
            res = distill_student(env, init, TeacherSource(env, entries, None, []))
        total = time.perf_counter() - t0
        test = classifier_val(res.model, data.test.x, data.test.y)["val_top1"]
        val = [round(h.get("val_top1", 0), 4) for h in res.fit.history]
        row = {"name": name, "test_top1": round(test, 4), "cache_s": round(cache_s), "total_s": round(total)}
        print(json.dumps({**row, "val_last5": val[-5:]}), flush=True)


if __name__ == "__main__":
    main()
