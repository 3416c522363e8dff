"""Speech and text distillation: teacher, plain-trained baseline student and distilled student,
each config run through `kdflow run` once per seed.

For every config (default: configs/speech_vowels.yaml, text_rotten_tomatoes.yaml,
text_chinese.yaml) and seed (default 0, 1, 2; set as trainer.seed), runs

    kdflow run CONFIG --set trainer.seed=S --report REPORT.json

in a fresh KDFLOW_HOME per config (so nothing is reused from an earlier run), and prints:

  * per run: wall time of the whole command (Prefect start-up included) and the 1-minute load
    average before and after (the machine may be shared);
  * per config: test top-1 of teacher / baseline / distilled student as mean ± std over the seeds,
    parameters, CPU latency at batch 1 and FLOPs per sample (from the evaluate stage), and
    whether the distilled student beats the baseline on average.

Usage: .venv/bin/python bench/sequences.py [--configs A.yaml B.yaml] [--seeds 0,1,2]
                                            [--set key=value ...] [--markdown OUT.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["configs/speech_vowels.yaml", "configs/text_rotten_tomatoes.yaml", "configs/text_chinese.yaml"]
ROLES = ("teacher", "baseline", "student")


def run_once(config: Path, seed: int, home: Path, overrides: list[str]) -> dict:
    report = home / f"report-seed{seed}.json"
    cmd = [
        str(ROOT / ".venv" / "bin" / "kdflow"),
        "run",
        str(config),
        "--set",
        f"trainer.seed={seed}",
        "--report",
        str(report),
    ]
    for item in overrides:
        cmd += ["--set", item]
    env = {**os.environ, "KDFLOW_HOME": str(home)}
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy machine starts it slowly
    env.pop("MLFLOW_TRACKING_URI", None)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"kdflow run {config} (seed {seed}) failed with exit code {proc.returncode}")
    data = json.loads(report.read_text())
    return {"seed": seed, "wall_s": wall, "load": (load_before, os.getloadavg()[0]), "models": data["models"]}


def fmt(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    std = 100 * (statistics.pstdev(values) if len(values) > 1 else 0.0)
    return f"{mean:.2f} ± {std:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=DEFAULT)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--home", default=None, help="parent folder for the per-config KDFLOW_HOMEs (default: a temp dir)")
    ap.add_argument("--markdown", default=None, help="also write the summary table here")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    parent = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="kdflow-bench-seq-"))

    sys.path.insert(0, str(ROOT))
    from kdcore.config import load_config
    from kdcore.data import load_dataset

    rows = []
    for config in args.configs:
        path = (ROOT / config) if not Path(config).is_absolute() else Path(config)
        cfg = load_config(path, args.overrides)
        modality = load_dataset(cfg.data).modality
        home = parent / path.stem
        home.mkdir(parents=True, exist_ok=True)
        runs = []
        for seed in seeds:
            r = run_once(path, seed, home, args.overrides)
            m = r["models"]
            print(
                f"{path.stem:24s} seed {seed}: teacher {100 * m['teacher']['top1']:.2f}  "
                f"baseline {100 * m['baseline']['top1']:.2f}  distilled {100 * m['student']['top1']:.2f}  "
                f"wall {r['wall_s']:.0f} s  load {r['load'][0]:.1f} -> {r['load'][1]:.1f}",
                flush=True,
            )
            runs.append(r)
        acc = {role: [r["models"][role]["top1"] for r in runs] for role in ROLES}
        last = runs[-1]["models"]
        rows.append(
            {
                "modality": modality,
                "config": path.name,
                "data": cfg.data.name,
                **{role: fmt(acc[role]) for role in ROLES},
                "gain": 100 * (statistics.fmean(acc["student"]) - statistics.fmean(acc["baseline"])),
                "params": f"{last['teacher']['params']:,} / {last['student']['params']:,}",
                "latency": (
                    f"{last['teacher'].get('latency_ms', float('nan')):.2f} / "
                    f"{last['student'].get('latency_ms', float('nan')):.2f}"
                ),
                "kflops": f"{last['teacher']['flops'] / 1e3:,.0f} / {last['student']['flops'] / 1e3:,.0f}",
                "wall": f"{max(r['wall_s'] for r in runs):.0f}",
            }
        )

    header = (
        "| modality | config | teacher top-1 % | baseline top-1 % | distilled top-1 % | gain (pts) | "
        "params teacher / student | latency ms@1 teacher / student | kFLOPs teacher / student | max wall s |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['modality']} | {r['config']} | {r['teacher']} | {r['baseline']} | {r['student']} | "
            f"{r['gain']:+.2f} | {r['params']} | {r['latency']} | {r['kflops']} | {r['wall']} |"
        )
    table = "\n".join(lines)
    print()
    print(f"test top-1, mean ± std over seeds {seeds} (trainer.seed); {os.cpu_count()} CPUs; homes under {parent}")
    print(table)
    verdict = all(r["gain"] > 0 for r in rows)
    print(f"\ndistilled student beats the baseline on average in every config: {verdict}")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
