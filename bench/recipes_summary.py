"""Means over seeds of bench/recipes.py's JSON lines, and each distilled variant's gain over the
baseline trained with the same settings and seed.

recipes.py prints one JSON line per run; its tables in bench/README.md give per-seed values and
their mean ± sample standard deviation, which this script prints from the saved lines:

    for s in 0 1 2; do .venv/bin/python bench/recipes.py --seed $s --variants base_lr05 kd_t2_lr05; done > runs.jsonl
    .venv/bin/python bench/recipes_summary.py runs.jsonl [more.jsonl ...]

Lines that are not JSON (warnings, progress) are skipped. A baseline is a line without a cache
build (``cache_build_s`` null); it matches a distilled line with the same seed, epochs, learning
rate, views, threads, batch size and weight decay (a line without ``batch_size``: 128; without
``weight_decay``: its variant's setting in recipes.py, lines older than that field). A later line
for the same variant, teacher and seed replaces an earlier one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def read_runs(paths: list[Path]) -> list[dict[str, Any]]:
    runs: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "variant" in row:
                runs[(row["variant"], row["teacher"], row["teacher_test_top1"], row["seed"])] = row
    return list(runs.values())


def variant_weight_decay(variant: str) -> float:
    """The weight decay recipes.py trains ``variant`` with: its own, else the pipeline's default."""
    import recipes  # bench/recipes.py, beside this file (it puts the repository on sys.path)

    from kdcore.config import TrainSpec

    default = TrainSpec.model_fields["weight_decay"].default
    return float(recipes.VARIANTS[variant][1].get("train", {}).get("weight_decay", default))


def settings(row: dict[str, Any]) -> tuple:
    wd = row["weight_decay"] if "weight_decay" in row else variant_weight_decay(row["variant"])
    return row["seed"], row["epochs"], row["lr"], row["views"], row["threads"], row.get("batch_size", 128), wd


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="files holding recipes.py's output")
    rows = read_runs(p.parse_args().files)
    baselines = {settings(r): r for r in rows if r["cache_build_s"] is None}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        teacher = None if r["cache_build_s"] is None else (r["teacher"], r["teacher_test_top1"])
        groups.setdefault((r["variant"], teacher), []).append(r)
    print("| variant | teacher | seeds | test top-1 % per seed | mean ± std | % of teacher | gain per seed | gain |")
    print("|---|---|---|---|---|---|---|---|")
    for (variant, teacher), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        runs.sort(key=lambda r: r["seed"])
        top1 = [r["test_top1"] for r in runs]
        gains = [
            r["test_top1"] - baselines[settings(r)]["test_top1"] for r in runs if teacher and settings(r) in baselines
        ]
        of_teacher = f"{100 * statistics.mean(top1) / teacher[1]:.1f}" if teacher else "—"
        print(
            f"| {variant} | {f'{teacher[0]} ({teacher[1]:.2f} %)' if teacher else '—'} "
            f"| {' / '.join(str(r['seed']) for r in runs)} | {' / '.join(f'{t:.2f}' for t in top1)} "
            f"| {mean_std(top1)} | {of_teacher} | {' / '.join(f'{g:+.2f}' for g in gains) or '—'} "
            f"| {('+' if statistics.mean(gains) >= 0 else '') + mean_std(gains) if gains else '—'} |"
        )


if __name__ == "__main__":
    main()
