"""How well do bench/recipes.py's students fit, on the images they trained on?

A distilled student can only gain over a plain-trained one what it can represent: if it does not
fit its teacher's function even on the training images, more patience or a better-matched loss
has little left to find. For each run folder of bench/recipes.py (HOME/runs/<variant>[-seed<s>],
its ``student.safetensors``) and for the teacher, this prints top-1 on the training split (the
54,000 images the students saw), on the official test split, and the share of images on which the
model's top class is the teacher's (agreement), as a table.

Usage:
  python bench/capacity.py --home /tmp/kdrec --teacher-checkpoint T --runs base_lr05_e100 kd_t2_lr05_e100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def top_classes(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from kdcore.evaluate import predict  # batched, eval mode, inference mode

    return predict(model, x).argmax(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", type=Path, required=True, help="bench/recipes.py's --home")
    p.add_argument("--teacher-checkpoint", type=Path, required=True)
    p.add_argument("--runs", nargs="+", required=True, help="run folder names under HOME/runs")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from recipes import base_config

    from kdcore.config import config_from_dict
    from kdcore.data import load_dataset
    from kdcore.train.checkpoint import load_model

    data = load_dataset(config_from_dict(base_config(Path("unused"), args.threads)).data)
    splits = {"train": (data.train.x, data.train.y), "test": (data.test.x, data.test.y)}
    teacher = load_model(args.teacher_checkpoint)
    teacher_top = {name: top_classes(teacher, x) for name, (x, _) in splits.items()}

    print("| model | train top-1 | test top-1 | train agreement with the teacher | test agreement |")
    print("|---|---|---|---|---|")
    rows = [("teacher", teacher)]
    for name in args.runs:
        path = args.home / "runs" / name / "student.safetensors"
        if not path.exists():
            p.error(f"no student checkpoint at {path}")
        rows.append((name, load_model(path)))
    for name, model in rows:
        cells = []
        tops = {split: top_classes(model, x) for split, (x, _) in splits.items()}
        for split, (_, y) in splits.items():
            cells.append(f"{100 * (tops[split] == y).float().mean().item():.2f} %")
        for split in splits:
            cells.append(f"{100 * (tops[split] == teacher_top[split]).float().mean().item():.2f} %")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
