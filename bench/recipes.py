"""Student recipes on issue 12's workload, each against a baseline trained with the same settings.

bench/full_fashion.py measures the workload as the issue states it (SGD lr 0.01, 10 epochs). This
script asks the question behind its targets: does distillation from the cached resnet14 teacher
beat a plain-trained student once the student is trained well (a higher learning rate, a longer
schedule)? Each variant runs kdcore's stages in this process (no Prefect / MLflow): the cache build
and the distillation, or the baseline (cross-entropy alone), on the full Fashion-MNIST
(54,000 / 6,000 / the official 10,000 test), the 9k-parameter `cnn` student, batch 128, SGD with
Nesterov momentum 0.9, weight decay 5e-4, cosine schedule; the best validation epoch's weights are
scored on the test split. It prints one JSON line per variant.

The teacher is a given checkpoint (``--teacher-checkpoint``, e.g. configs/full_fashion.yaml's
``HOME/runs/teacher/<fingerprint>/teacher.safetensors`` of a full_fashion.py home) or, without one,
a resnet14 trained here once (kept under HOME/bench/methods/): by default 20 epochs at lr 0.05 with
``teacher.augment: crop_flip`` (a fresh shifted/mirrored view of every image each epoch).

The ``*_cf*`` variants are patient and consistent teaching (function matching): the cache holds the
teacher's output on 10 crop/flip views of every training image, every epoch shows each image a view
it has not shown in the current cycle of 10 epochs, and the student matches the teacher's output on
that very view (KD alone); their baselines train with cross-entropy on the same views.

The ``kd_ls_*`` variants distil with logit standardization (``kd`` with ``standardize: true``: the
student matches the z-scored teacher logits at T 2), alone or as CE 0.1 + KD 9 (Sun et al.'s weights).

The ``kd_t2_at_*`` variants add attention transfer from the teacher's stages to the student's
blocks of the same map size (cached feature maps) to KD alone at T 2.

The ``dist_*`` variants distil with DIST (Huang et al. 2022, kdcore's ``dist`` loss) beside
cross-entropy; the ``*_wd1e4`` / ``*_wd0`` ones train with weight decay 1e-4 / 0 instead of 5e-4
(every JSON line says its ``weight_decay``, and bench/recipes_summary.py pairs baselines by it).

The ``mse_*`` variants regress the student's logits onto the teacher's (kdcore's ``logit_mse`` loss,
Ba & Caruana 2014, Kim et al. 2021): alone at weight 1 or 10, or beside cross-entropy.

The ``ttm_*`` / ``wttm_*`` variants distil with transformed teacher matching (Zheng & Yang 2024,
kdcore's ``ttm`` loss: only the teacher softened at T; ``wttm``: each sample weighted by the power
sum of the teacher's probabilities), alone or, as ``ce_*``, beside cross-entropy (the paper's form).

The ``ta_*`` variant distils a ``cnn_medium`` (94k parameters) from the resnet14: a teacher
assistant, whose saved student (HOME/runs/ta_.../student.safetensors) is then given as
``--teacher-checkpoint`` to teach the 9k student.

The ``*_adamw`` variants train with AdamW (lr 0.003, weight decay 0.01) instead of SGD.

The ``_e3`` / ``_e5`` variants ask whether KD gains more at short budgets (3 and 5 epochs).

The ``tl_*`` variants start the student from a same-family teacher's layers (configs/methods/
recommended.yaml's pretrain section, 1 epoch, then 9 epochs of KD); they need a ``cnn_medium``
teacher (``--teacher-arch cnn_medium``), whose filters the ``cnn`` student's layers slice.

With ``--ensemble PATH ...`` the teacher is the ensemble of ``--teacher-checkpoint`` (or the one
trained here) and those checkpoints: the mean of their class probabilities (Hinton et al.'s first
use of distillation), cached once like a single teacher's logits; its students' run folders are
HOME/runs/<variant>-ensemble<N>[-seed<s>] (every JSON line says its ``run``). ``--teacher-seed`` trains a
further teacher with the same settings and another seed.

Usage:
  python bench/recipes.py [--teacher-checkpoint PATH | --teacher-arch ARCH --teacher-epochs N]
      [--variants base_lr05 kd_t1_lr05 ...] [--threads 2] [--seed 0] [--ensemble PATH ...] [--label NAME]
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

KD_T4 = {"temperature": 4.0, "losses": {"kd": {"weight": 0.9}, "ce": {"weight": 0.1}}}
KD_T1 = {"temperature": 1.0, "losses": {"kd": {"weight": 1.0}}}
KD_T2 = {"temperature": 2.0, "losses": {"kd": {"weight": 1.0}}}
KD_T3 = {"temperature": 3.0, "losses": {"kd": {"weight": 1.0}}}
KD_T4_ALONE = {"temperature": 4.0, "losses": {"kd": {"weight": 1.0}}}
# logit standardization (Sun et al., CVPR 2024): KD on z-scored logits at T 2, alone or CE 0.1 + KD 9 (their weights)
KD_LS_T2 = {"temperature": 2.0, "losses": {"kd": {"weight": 1.0, "standardize": True}}}
KD_LS_W9 = {"temperature": 2.0, "losses": {"ce": {"weight": 0.1}, "kd": {"weight": 9.0, "standardize": True}}}
# configs/methods/dkd.yaml's losses (CE + DKD, alpha 1, beta 8, T 4, 70 warm-up steps)
DKD = {
    "losses": {
        "ce": {"weight": 1.0},
        "dkd": {"weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup": 70},
    }
}

# DIST (Huang et al. 2022): the student's probabilities correlated with the teacher's per sample and
# per class, beside cross-entropy; the paper's ImageNet settings (beta = gamma = 1, T 1) and its
# CIFAR-100 ones (beta = gamma = 2, T 4)
DIST_T1 = {"losses": {"ce": {"weight": 1.0}, "dist": {"weight": 1.0, "beta": 1.0, "gamma": 1.0, "temperature": 1.0}}}
DIST_T4 = {"losses": {"ce": {"weight": 1.0}, "dist": {"weight": 1.0, "beta": 2.0, "gamma": 2.0, "temperature": 4.0}}}

# KD alone at T 2 plus attention transfer (Zagoruyko & Komodakis) from the resnet14's stages to the
# cnn student's blocks of the same map size: block1 (16x14x14) <- layer2 (32x14x14), block2 (24x7x7)
# <- layer3 (64x7x7); weight 2 as bench/methods.py's kd_t2+at row
AT_PAIRS = [{"student": "block1", "teacher": "layer2"}, {"student": "block2", "teacher": "layer3"}]
KD_T2_AT = {"temperature": 2.0, "losses": {"kd": {"weight": 1.0}, "at": {"weight": 2.0, "pairs": AT_PAIRS}}}

# logit regression (Ba & Caruana 2014; Kim et al. 2021): the student's logits onto the teacher's, no
# temperature; weight 1 (mean over classes) and 10 (the sum over the 10 classes, Kim et al.'s form)
MSE = {"losses": {"logit_mse": {"weight": 1.0}}}
MSE_W10 = {"losses": {"logit_mse": {"weight": 10.0}}}
MSE_CE = {"losses": {"ce": {"weight": 1.0}, "logit_mse": {"weight": 1.0}}}

# transformed teacher matching (Zheng & Yang, ICLR 2024): the teacher softened at T, the student not;
# alone (as KD alone at T 2 is the best KD here) and beside cross-entropy (the paper's form), and
# WTTM (each sample weighted by the power sum of the teacher's probabilities)
TTM_T2 = {"temperature": 2.0, "losses": {"ttm": {"weight": 1.0}}}
TTM_T4 = {"temperature": 4.0, "losses": {"ttm": {"weight": 1.0}}}
WTTM_T2 = {"temperature": 2.0, "losses": {"ttm": {"weight": 1.0, "weighted": True}}}
CE_TTM_T2 = {"temperature": 2.0, "losses": {"ce": {"weight": 1.0}, "ttm": {"weight": 1.0}}}
CE_WTTM_T2 = {"temperature": 2.0, "losses": {"ce": {"weight": 1.0}, "ttm": {"weight": 1.0, "weighted": True}}}

CROP_FLIP = {"policy": "crop_flip", "pad": 2}  # a shift of up to 2 px and a mirror, per view

# configs/methods/recommended.yaml's start: the student takes the leading slices of a same-family
# teacher's layers (cnn_medium -> cnn) and trains them 1 epoch on soft targets; 9 epochs of KD follow
TEACHER_LAYERS = {
    "method": "teacher_layers",
    "select": "first",
    "partial": True,
    "freeze_copied": True,
    "losses": {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4.0}},
    "train": {"max_epochs": 1, "batch_size": 128, "lr": 0.05},
}

# name -> (baseline?, distill section laid over the base's, cache.views or None)
# A baseline with views trains with cross-entropy on the very views its distilled pair sees.
VARIANTS: dict[str, tuple[bool, dict[str, Any], Any]] = {
    "base_lr01": (True, {}, None),
    "base_lr05": (True, {"train": {"lr": 0.05}}, None),
    "kd_t4_lr05": (False, {**KD_T4, "train": {"lr": 0.05}}, None),
    "kd_t1_lr05": (False, {**KD_T1, "train": {"lr": 0.05}}, None),
    "kd_t4_lr01": (False, {**KD_T4}, None),  # the KD row: its workload as stated
    "kd_t1_lr01": (False, {**KD_T1}, None),
    "dkd_lr01": (False, {**DKD}, None),
    "dkd_lr05": (False, {**DKD, "train": {"lr": 0.05}}, None),
    "kd_t2_lr05": (False, {**KD_T2, "train": {"lr": 0.05}}, None),
    "kd_t3_lr05": (False, {**KD_T3, "train": {"lr": 0.05}}, None),
    "kd_t4alone_lr05": (False, {**KD_T4_ALONE, "train": {"lr": 0.05}}, None),
    "kd_t2_lr01": (False, {**KD_T2}, None),
    "kd_t2_lr10": (False, {**KD_T2, "train": {"lr": 0.1}}, None),
    "base_lr10": (True, {"train": {"lr": 0.1}}, None),
    "kd_t1_lr10": (False, {**KD_T1, "train": {"lr": 0.1}}, None),
    "kd_ls_t2_lr05": (False, {**KD_LS_T2, "train": {"lr": 0.05}}, None),
    "kd_ls_w9_lr05": (False, {**KD_LS_W9, "train": {"lr": 0.05}}, None),
    "kd_ls_w9_lr01": (False, {**KD_LS_W9}, None),
    "base_lr05_e30": (True, {"train": {"lr": 0.05, "max_epochs": 30}}, None),
    "kd_t1_lr05_e30": (False, {**KD_T1, "train": {"lr": 0.05, "max_epochs": 30}}, None),
    "kd_t2_lr05_e30": (False, {**KD_T2, "train": {"lr": 0.05, "max_epochs": 30}}, None),
    # 40, 42 and 45 epochs: 4.76x (an earlier session), 3.91x and 4.70x (3 seeds, 2026-12-03) a 10-epoch
    # baseline's time with the cache build (bench/README.md)
    "base_lr05_e45": (True, {"train": {"lr": 0.05, "max_epochs": 45}}, None),
    "kd_t2_lr05_e45": (False, {**KD_T2, "train": {"lr": 0.05, "max_epochs": 45}}, None),
    "kd_t2_lr05_e40": (False, {**KD_T2, "train": {"lr": 0.05, "max_epochs": 40}}, None),
    "kd_t2_lr05_e42": (False, {**KD_T2, "train": {"lr": 0.05, "max_epochs": 42}}, None),
    # does the gain keep growing with patience (Beyer et al.: the distilled student keeps improving
    # where the plain one saturates)?
    "base_lr05_e100": (True, {"train": {"lr": 0.05, "max_epochs": 100}}, None),
    "kd_t2_lr05_e100": (False, {**KD_T2, "train": {"lr": 0.05, "max_epochs": 100}}, None),
    "base_lr05_e3": (True, {"train": {"lr": 0.05, "max_epochs": 3}}, None),
    "kd_t2_lr05_e3": (False, {**KD_T2, "train": {"lr": 0.05, "max_epochs": 3}}, None),
    "base_lr05_e5": (True, {"train": {"lr": 0.05, "max_epochs": 5}}, None),
    "kd_t2_lr05_e5": (False, {**KD_T2, "train": {"lr": 0.05, "max_epochs": 5}}, None),
    # batch 256 at twice the rate (linear scaling): fewer, larger steps, faster epochs on the CPU
    "kd_t2_b256_lr10_e45": (False, {**KD_T2, "train": {"lr": 0.1, "max_epochs": 45, "batch_size": 256}}, None),
    # batch 64: twice the steps in the same 10 epochs, at the same rate and at half of it (linear scaling)
    "base_lr05_b64": (True, {"train": {"lr": 0.05, "batch_size": 64}}, None),
    "kd_t2_lr05_b64": (False, {**KD_T2, "train": {"lr": 0.05, "batch_size": 64}}, None),
    "base_lr025_b64": (True, {"train": {"lr": 0.025, "batch_size": 64}}, None),
    "kd_t2_lr025_b64": (False, {**KD_T2, "train": {"lr": 0.025, "batch_size": 64}}, None),
    # weight decay 1e-4 and 0 instead of 5e-4: does a 9k student fed soft targets need less regularising?
    "base_lr05_wd1e4": (True, {"train": {"lr": 0.05, "weight_decay": 1e-4}}, None),
    "kd_t2_lr05_wd1e4": (False, {**KD_T2, "train": {"lr": 0.05, "weight_decay": 1e-4}}, None),
    "base_lr05_wd0": (True, {"train": {"lr": 0.05, "weight_decay": 0.0}}, None),
    "kd_t2_lr05_wd0": (False, {**KD_T2, "train": {"lr": 0.05, "weight_decay": 0.0}}, None),
    "base_lr05_wd0_e45": (True, {"train": {"lr": 0.05, "weight_decay": 0.0, "max_epochs": 45}}, None),
    "kd_t2_lr05_wd0_e45": (False, {**KD_T2, "train": {"lr": 0.05, "weight_decay": 0.0, "max_epochs": 45}}, None),
    "base_adamw": (True, {"train": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.01}}, None),
    "kd_t2_adamw": (False, {**KD_T2, "train": {"optimizer": "adamw", "lr": 0.003, "weight_decay": 0.01}}, None),
    "dist_t1_lr05": (False, {**DIST_T1, "train": {"lr": 0.05}}, None),
    "dist_t4_lr05": (False, {**DIST_T4, "train": {"lr": 0.05}}, None),
    # KD alone at T 2 (the best recipe here) with DIST beside it instead of cross-entropy
    "kd_t2_dist_lr05": (
        False,
        {**KD_T2, "losses": {**KD_T2["losses"], "dist": DIST_T1["losses"]["dist"]}, "train": {"lr": 0.05}},
        None,
    ),
    "kd_t2_at_lr05": (False, {**KD_T2_AT, "train": {"lr": 0.05}}, None),
    "kd_t2_at_lr05_e45": (False, {**KD_T2_AT, "train": {"lr": 0.05, "max_epochs": 45}}, None),
    "mse_lr05": (False, {**MSE, "train": {"lr": 0.05}}, None),
    "ttm_t2_lr05": (False, {**TTM_T2, "train": {"lr": 0.05}}, None),
    "ttm_t4_lr05": (False, {**TTM_T4, "train": {"lr": 0.05}}, None),
    "wttm_t2_lr05": (False, {**WTTM_T2, "train": {"lr": 0.05}}, None),
    "ce_ttm_t2_lr05": (False, {**CE_TTM_T2, "train": {"lr": 0.05}}, None),
    "ce_wttm_t2_lr05": (False, {**CE_WTTM_T2, "train": {"lr": 0.05}}, None),
    "ce_ttm_t2_lr05_e45": (False, {**CE_TTM_T2, "train": {"lr": 0.05, "max_epochs": 45}}, None),
    "mse_w10_lr05": (False, {**MSE_W10, "train": {"lr": 0.05}}, None),
    "mse_ce_lr05": (False, {**MSE_CE, "train": {"lr": 0.05}}, None),
    # patient and consistent: a new crop/flip view of every image each epoch, the teacher's output on it cached
    "base_cf10_lr05": (True, {"train": {"lr": 0.05}}, {**CROP_FLIP, "num_views": 10}),
    "fm_cf10_t1_lr05": (False, {**KD_T1, "train": {"lr": 0.05}}, {**CROP_FLIP, "num_views": 10}),
    "fm_cf10_t4_lr05": (False, {**KD_T4, "train": {"lr": 0.05}}, {**CROP_FLIP, "num_views": 10}),
    "base_cf10_lr05_e30": (True, {"train": {"lr": 0.05, "max_epochs": 30}}, {**CROP_FLIP, "num_views": 10}),
    "fm_cf10_t1_lr05_e30": (False, {**KD_T1, "train": {"lr": 0.05, "max_epochs": 30}}, {**CROP_FLIP, "num_views": 10}),
}
# a teacher assistant (Mirzadeh et al., AAAI 2020): a cnn_medium (94k parameters) distilled from the
# resnet14, whose saved student then teaches the 9k cnn (--teacher-checkpoint HOME/runs/<it>/student.safetensors)
VARIANTS["ta_medium_kd_t2_lr05_e15"] = (False, {**KD_T2, "train": {"lr": 0.05, "max_epochs": 15}}, None)
# name -> student section, for the variants that train another student than the 9k cnn
STUDENTS: dict[str, dict[str, Any]] = {"ta_medium_kd_t2_lr05_e15": {"arch": "cnn_medium", "kwargs": {}}}
# name -> pretrain section (the variants that start from the teacher's layers: --teacher-arch cnn_medium)
PRETRAIN: dict[str, dict[str, Any]] = {}
for _name, _distill in (("tl_kd_t4_lr05", KD_T4), ("tl_kd_t2_lr05", KD_T2)):
    VARIANTS[_name] = (False, {**_distill, "train": {"lr": 0.05, "max_epochs": 9}}, None)
    PRETRAIN[_name] = TEACHER_LAYERS


def base_config(teacher: Path, threads: int, seed: int = 0, arch: str = "resnet14") -> dict[str, Any]:
    return {
        "name": "recipes",
        "data": {"name": "fashion_mnist", "val_fraction": 0.1},
        "teacher": {"arch": arch, "kwargs": {}, "checkpoint": str(teacher)},
        "student": {"arch": "cnn", "kwargs": {"channels": [16, 24, 24]}},
        "distill": {"train": {"max_epochs": 10, "batch_size": 128, "lr": 0.01}},
        "trainer": {"device": "cpu", "seed": seed, "num_threads": threads},
    }


def _lay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "losses":
            _lay(base[key], value)
        else:
            base[key] = value
    return base


class ProbabilityEnsemble(torch.nn.Module):
    """Teachers averaged as a classic ensemble: the log of their mean class probabilities, which
    kdcore's cache and losses then treat as the teacher's logits (KD's softmax gives back the mean
    probabilities at T 1). The student matches the ensemble's output only, no feature maps."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).softmax(dim=-1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(1e-12).log()


def variant_config(name: str, teacher: Path, threads: int, seed: int = 0, arch: str = "resnet14") -> dict[str, Any]:
    """The raw pipeline config of one variant (its baseline trains with the distillation's settings)."""
    _, distill, views = VARIANTS[name]
    raw = base_config(teacher, threads, seed, arch)
    _lay(raw["distill"], copy.deepcopy(distill))
    if name in PRETRAIN:
        raw["pretrain"] = copy.deepcopy(PRETRAIN[name])
    if name in STUDENTS:
        raw["student"] = copy.deepcopy(STUDENTS[name])
    raw["baseline"] = {"train": raw["distill"]["train"]}
    if views is not None:
        raw["cache"] = {"views": dict(views)}
    return raw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-checkpoint", type=Path, help="a trained teacher (else one is trained, see below)")
    p.add_argument("--teacher-arch", default="resnet14", help="without a checkpoint: the teacher trained here")
    p.add_argument("--teacher-epochs", type=int, default=20, help="without a checkpoint: the teacher's epochs")
    p.add_argument("--teacher-lr", type=float, default=0.05, help="without a checkpoint: its learning rate")
    p.add_argument(
        "--teacher-augment", default="crop_flip", help="without a checkpoint: its teacher.augment policy (or none)"
    )
    p.add_argument(
        "--teacher-seed", type=int, default=0, help="without a checkpoint: the teacher's trainer.seed (default: 0)"
    )
    p.add_argument(
        "--ensemble",
        type=Path,
        nargs="+",
        default=[],
        help="more teacher checkpoints: the teacher becomes the ensemble of all (mean class probabilities)",
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=2, help="torch threads (the weights depend on it, bit for bit)")
    p.add_argument(
        "--label",
        default="",
        help="appended to the distilled students' run folders (HOME/runs/<variant>-<label>), e.g. to keep the "
        "students of another --teacher-checkpoint apart from the default teacher's",
    )
    p.add_argument("--seed", type=int, default=0, help="trainer.seed of the students (the teacher's: --teacher-seed)")
    p.add_argument("--home", type=Path, default=Path("/tmp/kdflow-recipes"), help="cache entries and stage folders")
    args = p.parse_args()

    import methods as M  # bench/methods.py: run_one trains a baseline or distils from cache entries

    from kdcore.config import config_from_dict
    from kdcore.data import load_dataset
    from kdcore.fingerprint import file_sha256, stable_hash
    from kdcore.stages import StageEnv, build_features, classifier_val
    from kdcore.train.checkpoint import load_model

    data = load_dataset(config_from_dict(base_config(Path("unused"), args.threads)).data)
    if args.teacher_checkpoint is None:  # trained once per setting, kept under HOME/bench/methods/
        raw = base_config(Path("unused"), args.threads, args.teacher_seed)
        raw["teacher"] = {
            "arch": args.teacher_arch,
            "kwargs": {},
            "train": {"max_epochs": args.teacher_epochs, "batch_size": 128, "lr": args.teacher_lr},
        }
        args.teacher_checkpoint, _ = M.get_teacher(args.home, raw, data, args.teacher_augment)
    teacher = load_model(args.teacher_checkpoint)
    teacher_arch = json.loads(Path(str(args.teacher_checkpoint) + ".json").read_text())["spec"]["arch"]
    tag = file_sha256(args.teacher_checkpoint)  # the cache entries are keyed by the teacher's weights
    if args.ensemble:
        teacher = ProbabilityEnsemble([teacher] + [load_model(p) for p in args.ensemble])
        tag = stable_hash([tag] + [file_sha256(p) for p in args.ensemble])
    teacher_test = classifier_val(teacher, data.test.x, data.test.y)["val_top1"]
    built_s: dict[str, float] = {}

    def entries_for(cfg, work: Path):
        """The cache entries of this variant's views: built once (timed), then found in HOME/cache."""
        t0 = time.perf_counter()
        built = build_features(StageEnv(cfg, data, work), teacher, tag, args.home / "cache")
        key = json.dumps(cfg.cache.views.spec(), sort_keys=True)
        built_s.setdefault(key, time.perf_counter() - t0)
        return {split: entry for split, (entry, _) in built.items()}

    wrong = [n for n in args.variants if n in PRETRAIN and teacher_arch != "cnn_medium"]
    if wrong:
        p.error(f"{', '.join(wrong)} copy a cnn_medium teacher's layers; the teacher is a {teacher_arch}")
    for name in args.variants:
        is_baseline = VARIANTS[name][0]
        raw = variant_config(name, args.teacher_checkpoint, args.threads, args.seed, teacher_arch)
        cfg = config_from_dict(raw)
        # an ensemble's students keep apart from the single teacher's (same variant and seed)
        label = (f"-ensemble{1 + len(args.ensemble)}" if args.ensemble else "") + (
            f"-{args.label}" if args.label else ""
        )
        folder = name + ("" if is_baseline else label)
        work = args.home / "runs" / (folder if args.seed == 0 else f"{folder}-seed{args.seed}")
        shutil.rmtree(work, ignore_errors=True)  # else its checkpoints resume it and the seconds mean nothing
        r = M.run_one(raw, "baseline" if is_baseline else name, data, teacher, work, entries_for)
        test, seconds = r["test_top1"], r["seconds"]
        views_key = json.dumps(cfg.cache.views.spec(), sort_keys=True)
        print(
            json.dumps(
                {
                    "variant": name,
                    "test_top1": round(100 * test, 2),
                    "teacher_test_top1": round(100 * teacher_test, 2),
                    "of_teacher_pct": round(100 * test / teacher_test, 1),
                    "epochs": cfg.distill.train.max_epochs + (cfg.pretrain.train.max_epochs if name in PRETRAIN else 0),
                    "teacher": teacher_arch + (f" ensemble of {1 + len(args.ensemble)}" if args.ensemble else ""),
                    "lr": cfg.distill.train.lr,
                    "batch_size": cfg.distill.train.batch_size,
                    "weight_decay": cfg.distill.train.weight_decay,
                    "views": cfg.cache.views.num_views,
                    # this run's cache build (a reused entry: its lookup time)
                    "cache_build_s": None if is_baseline else round(built_s[views_key], 1),
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
