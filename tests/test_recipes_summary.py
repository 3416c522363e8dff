"""bench/recipes_summary.py pairs each distilled run with the baseline trained with the same
settings, weight decay included (from the line, or from recipes.py's variant for older lines)."""

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _line(variant, top1, *, wd=None, cache=1.0):
    row = {"variant": variant, "test_top1": top1, "teacher_test_top1": 93.74, "epochs": 10, "lr": 0.05}
    row.update(teacher="resnet14", views=1, threads=2, seed=0, batch_size=128, cache_build_s=cache)
    if wd is not None:
        row["weight_decay"] = wd
    return json.dumps(row)


def test_gains_are_taken_against_the_baseline_with_the_same_weight_decay(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs.jsonl"
    lines = [
        _line("base_lr05", 90.00, cache=None),  # an older line: weight decay 5e-4 from recipes.py
        _line("base_lr05_wd1e4", 91.00, wd=1e-4, cache=None),
        _line("kd_t2_lr05_wd1e4", 91.25, wd=1e-4),
        _line("kd_t2_lr05", 90.50),  # older, no weight_decay: recipes.py's variant trains with 5e-4
        "W1203 a warning line, skipped",
    ]
    runs.write_text("\n".join(lines) + "\n")
    spec = importlib.util.spec_from_file_location("bench_recipes_summary", ROOT / "bench" / "recipes_summary.py")
    assert spec is not None and spec.loader is not None
    summary = importlib.util.module_from_spec(spec)
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    try:
        sys.path.insert(0, str(ROOT / "bench"))  # where the script finds recipes.py when run as a file
        spec.loader.exec_module(summary)
        monkeypatch.setattr(sys, "argv", ["recipes_summary.py", str(runs)])
        summary.main()
    finally:
        sys.path[:] = saved_path  # recipes.py puts the repository and bench/ on sys.path
        for name in ("recipes", "methods") if "recipes" not in saved_modules else ():
            sys.modules.pop(name, None)  # bench scripts imported by their file names, not packages
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert rows["kd_t2_lr05_wd1e4"].rstrip().endswith("| +0.25 |"), out  # against 91.00, not 90.00
    assert rows["kd_t2_lr05"].rstrip().endswith("| +0.50 |"), out
