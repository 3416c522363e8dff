"""Issue 12's figures on the full Fashion-MNIST workload (configs/full_fashion.yaml), through `kdflow run`.

Every method variant is one `kdflow run` of the config (a subprocess, `--quiet --ephemeral --report`)
in one KDFLOW_HOME, so the variants share what their fingerprints share: the teacher is trained once
(or taken from an earlier run in the same home), the variants with the same cache settings share the
features stage, and the variants with the same student training budget share the baseline student.

  kd                 the config as it is (Hinton KD from the cache)
  dkd                the config with configs/methods/dkd.yaml's `distill.losses` (CE + DKD, alpha 1, beta 8, T 4)
  function_matching  the config with configs/methods/function_matching.yaml's `cache`, `pretrain` and
                     `distill` sections laid over it (skipped, and said so, while that file is missing)

Every run also trains (or reuses) the plain-trained baseline at the same epoch budget as its
distillation (`baseline.train` defaults to `distill.train`). With several seeds (`trainer.seed`), the
first seed's teacher is reused by the later ones (`teacher.checkpoint`): the students' seeds vary, the
teacher does not.

From each run's report it takes the test top-1 of teacher, baseline and student, the parameters and
FLOPs the evaluate stage measured, and each stage's compute seconds (a cached stage reports the
seconds of the run that computed it). Then, unless switched off:

  * torchdistill 1.1.5's online KD against kdflow's cached KD on the same teacher checkpoint, student,
    data and schedule: bench/vs_torchdistill.py (torchdistill runs in `.venv-bench`, see bench/README.md);
  * the bare-loop ratio per training stage: bench/bare_loop.py's `measure` (skipped while it is missing).

It prints one table and checks the issue's targets: a student >= 98 % of the teacher's test top-1,
>= +1.0 point over the baseline, in <= 5x the baseline's training time; time to a distilled student
(features + distill) <= 1/3 of torchdistill's online KD; every training stage >= 0.95x a bare loop.

Usage:
  python bench/full_fashion.py [--home DIR] [--seeds 0 1 2] [--methods kd dkd function_matching]
  python bench/full_fashion.py --limit-train 2000 --epochs 1 --teacher-epochs 1 --home $(mktemp -d)   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
for p in (ROOT, BENCH):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

DEFAULT_CONFIG = ROOT / "configs" / "full_fashion.yaml"
METHODS_DIR = ROOT / "configs" / "methods"
METHODS = ("kd", "dkd", "function_matching")
FM_SECTIONS = ("cache", "pretrain", "distill")  # what function_matching.yaml contributes to the workload
TARGET_OF_TEACHER, TARGET_GAIN, TARGET_TIME_X, TARGET_VS_TD, TARGET_BARE = 0.98, 1.0, 5.0, 1 / 3, 0.95


# ----------------------------------------------------------------------------- variants as overrides


def _dotted(prefix: str, value: Any) -> list[str]:
    """``--set`` items laying ``value`` over the config at ``prefix``: mappings field by field, a
    ``losses`` mapping (the objective) and every other value whole."""
    if isinstance(value, dict) and value and not prefix.endswith("losses"):
        return [item for key, v in value.items() for item in _dotted(f"{prefix}.{key}", v)]
    return [f"{prefix}={json.dumps(value)}"]


def method_overrides(method: str) -> Optional[list[str]]:
    """The ``--set`` items that turn the workload into ``method`` (None: its config file is missing)."""
    from kdcore.config import read_yaml

    if method == "kd":
        return []
    path = METHODS_DIR / f"{method}.yaml"
    if not path.is_file():
        return None
    raw = read_yaml(path)
    if method == "dkd":  # the method is its objective; the workload keeps its own schedule
        return _dotted("distill.losses", raw["distill"]["losses"])
    return [item for section in FM_SECTIONS if section in raw for item in _dotted(section, raw[section])]


def size_overrides(args: argparse.Namespace, cfg) -> list[str]:
    """``--limit-train``, ``--epochs``, ``--teacher-epochs`` (smoke tests) as ``--set`` items for ``cfg``."""
    out = []
    if args.limit_train:
        out.append(f"data.limit_train={args.limit_train}")
    if args.teacher_epochs:
        out.append(f"teacher.train.max_epochs={args.teacher_epochs}")
    if args.epochs:
        out.append(f"distill.train.max_epochs={args.epochs}")
        if cfg.pretrain.method != "none":
            out.append(f"pretrain.train.max_epochs={min(args.epochs, cfg.pretrain.train.max_epochs)}")
        if cfg.baseline.train is not None:
            out.append(f"baseline.train.max_epochs={args.epochs}")
    return out


def variant_overrides(args: argparse.Namespace, method: str, seed: int, teacher_ckpt: Optional[str]) -> list[str]:
    from kdcore.config import load_config

    sets = list(args.set) + method_overrides(method)  # type: ignore[operator]
    sets += size_overrides(args, load_config(args.config, sets))
    sets.append(f"trainer.seed={seed}")
    if teacher_ckpt:
        sets.append(f"teacher.checkpoint={json.dumps(teacher_ckpt)}")
    load_config(args.config, sets)  # a bad combination fails here, before anything runs
    return sets


# ----------------------------------------------------------------------------- running


def kdflow_run(args: argparse.Namespace, sets: list[str], report: Path, log: Path) -> tuple[Optional[dict], float]:
    """One `kdflow run` in ``args.home``; its report (None if it failed) and wall seconds. A run whose
    temporary Prefect server did not come up in time (a busy machine) is tried once more."""
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        str(args.config),
        "--quiet",
        "--ephemeral",
        "--report",
        str(report),
    ]
    for item in sets:
        cmd += ["--set", item]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, KDFLOW_HOME=str(args.home), PYTHONPATH=path)
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy machine starts it slowly
    t0 = time.perf_counter()
    for attempt in range(2):
        report.unlink(missing_ok=True)
        t0 = time.perf_counter()
        with log.open("w") as fh:
            fh.write("$ " + " ".join(cmd) + "\n")
            fh.flush()
            rc = subprocess.run(cmd, env=env, cwd=str(ROOT), stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc == 0 or "connect to ephemeral Prefect API server" not in log.read_text() or attempt:
            break
        print("  the temporary Prefect server did not start in time: once more", flush=True)
    wall = time.perf_counter() - t0
    if rc != 0 or not report.is_file():
        tail = log.read_text().strip().splitlines()[-5:]
        print(f"  failed (exit {rc}); the end of {log}:", *("    " + line for line in tail), sep="\n", flush=True)
        return None, wall
    return json.loads(report.read_text()), wall


def summarise(report: dict[str, Any], wall: float) -> dict[str, Any]:
    """What the table needs from one run's report."""
    models, stages = report["models"], report["stages"]

    def secs(stage: str) -> Optional[float]:
        return stages[stage]["compute_seconds"] if stage in stages else None

    return {
        "wall_s": wall,
        "top1": {m: v["top1"] for m, v in models.items()},
        "params": {m: v.get("params") for m, v in models.items()},
        "flops": {m: v.get("flops") for m, v in models.items()},
        "seconds": {s: secs(s) for s in stages},
        "cached": {s: i["cached"] for s, i in stages.items()},
        "fingerprints": {s: i["fingerprint"] for s, i in stages.items()},
        "teacher_path": report["artifacts"].get("teacher"),
        "features_path": report["artifacts"].get("features"),
        "tracking_uri": report.get("tracking_uri"),
        "verdict": report.get("verdict"),
    }


def outcome_lines(report: dict[str, Any]) -> list[str]:
    """How well the student follows its teacher (the evaluate stage's fit sample and test split) and
    the run's verdict on whether distillation paid, as `kdflow run` prints it."""
    from flows.report import verdict_lines

    student, lines = report["models"].get("student", {}), []
    if "train_agreement" in student:
        lines.append(
            f"student's agreement with the teacher: {100 * student['train_agreement']:.2f} % on the fit sample of the "
            f"training split, {100 * student['agreement']:.2f} % on the test split; train top-1 "
            + ", ".join(f"{m} {100 * v['train_top1']:.2f} %" for m, v in report["models"].items() if "train_top1" in v)
        )
    return lines + verdict_lines(report)


def run_variants(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    runs: dict[str, dict[int, dict]] = {}
    missing: dict[str, str] = {}
    teacher_ckpt: Optional[str] = str(args.teacher_checkpoint) if args.teacher_checkpoint else None
    for i, seed in enumerate(args.seeds):
        for method in args.methods:
            if method_overrides(method) is None:
                missing[method] = f"not run: missing configs/methods/{method}.yaml"
                continue
            sets = variant_overrides(args, method, seed, teacher_ckpt if i > 0 or args.teacher_checkpoint else None)
            print(
                f"{method} seed {seed}: kdflow run {args.config.name} " + " ".join(f"--set {s}" for s in sets),
                flush=True,
            )
            report, wall = kdflow_run(args, sets, out / f"{method}-seed{seed}.json", out / f"{method}-seed{seed}.log")
            if report is None:
                runs.setdefault(method, {})[seed] = {"failed": True, "wall_s": wall}
                continue
            s = summarise(report, wall)
            runs.setdefault(method, {})[seed] = s
            teacher_ckpt = teacher_ckpt or s["teacher_path"]
            top = s["top1"]
            print(
                f"  {wall:.0f} s: test top-1 teacher {100 * top['teacher']:.2f} %, baseline "
                f"{100 * top.get('baseline', float('nan')):.2f} %, student {100 * top['student']:.2f} %; compute s "
                + ", ".join(f"{k} {v:.1f}{' (cached)' if s['cached'][k] else ''}" for k, v in s["seconds"].items()),
                flush=True,
            )
            print(*("  " + line for line in outcome_lines(report)), sep="\n", flush=True)
    builds = {
        r["features_path"]: cache_build_seconds(r["tracking_uri"], r["features_path"])
        for seeds in runs.values()
        for r in seeds.values()
        if not r.get("failed") and r.get("features_path")
    }
    return {"runs": runs, "missing": missing, "teacher_checkpoint": teacher_ckpt, "cache_build_s": builds}


def cache_build_seconds(tracking_uri: Optional[str], entry: str) -> Optional[float]:
    """Seconds of the features stage that built the cache entry ``entry`` (its folder), from MLflow.

    A features stage that finds its entries already built (a later seed's teacher is the first one's
    checkpoint, or a teacher given with --teacher-checkpoint that trained in this home) computes in
    no time; the time to a distilled student counts the build. None: no such run found."""
    if not tracking_uri:
        return None
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, filter_string="tags.`kdflow.stage` = 'features'", max_results=5000)
    except Exception as exc:  # noqa: BLE001  (a figure less, not a failed benchmark)
        print(f"note: the cache build time could not be read from MLflow ({type(exc).__name__}: {exc})", flush=True)
        return None
    key = Path(entry).name
    built = [
        r
        for r in runs
        if (r.data.tags.get("kdflow.artifact_sha256") or "").startswith(key) and r.data.metrics.get("entries_built")
    ]
    if not built:
        return None
    return max(built, key=lambda r: r.info.start_time).data.metrics.get("build_seconds")


# ----------------------------------------------------------------------------- torchdistill, bare loop


def vs_torchdistill(args: argparse.Namespace, teacher_ckpt: str, out: Path) -> Optional[dict[str, Any]]:
    """bench/vs_torchdistill.py on this workload: torchdistill online KD and kdflow's cached KD."""
    from kdcore.config import load_config

    cfg = load_config(args.config, variant_overrides(args, "kd", args.seeds[0], None))
    t, losses = cfg.distill.train, cfg.distill.objective_spec()
    if set(losses) != {"kd", "ce"} or t.optimizer != "sgd" or t.scheduler != "cosine":
        print("torchdistill: not run (vs_torchdistill.py compares SGD + cosine with kd + ce only)", flush=True)
        return None
    if (t.momentum, t.weight_decay) != (0.9, 5e-4):
        print("note: vs_torchdistill.py uses momentum 0.9 and weight decay 5e-4, the config does not", flush=True)
    result = out / "vs_torchdistill.json"
    cmd = [sys.executable, str(BENCH / "vs_torchdistill.py"), "--variants", *args.td_variants]
    cmd += ["--teacher-checkpoint", teacher_ckpt, "--student-arch", cfg.student.arch]
    cmd += ["--student-kwargs", json.dumps(cfg.student.kwargs), "--limit-train", str(cfg.data.limit_train or 0)]
    cmd += ["--epochs", str(t.max_epochs), "--batch-size", str(t.batch_size), "--lr", str(t.lr)]
    cmd += ["--temperature", str(losses["kd"].get("temperature", cfg.distill.temperature))]
    cmd += ["--kd-weight", str(losses["kd"]["weight"]), "--seed", str(args.seeds[0])]
    cmd += ["--threads", str(cfg.trainer.num_threads or 1), "--device", cfg.trainer.device]
    cmd += ["--rounds", "1", "--accuracy-seeds", "--home", str(args.home), "--json", str(result)]
    print("torchdistill comparison: " + " ".join(cmd[1:]), flush=True)
    result.unlink(missing_ok=True)
    rc = subprocess.run(cmd, cwd=str(ROOT)).returncode
    if rc != 0 or not result.is_file():
        print(f"torchdistill comparison failed (exit {rc})", flush=True)
        return None
    return json.loads(result.read_text())


def bare_loop(args: argparse.Namespace) -> list[dict[str, Any]]:
    """bench/bare_loop.py's rows for this workload (none while that file is missing)."""
    try:
        from bare_loop import measure
    except ImportError:
        return []
    import inspect

    extra = {"rounds": args.bare_rounds} if "rounds" in inspect.signature(measure).parameters else {}
    return measure(args.config, list(args.set), args.bare_epochs, args.limit_train, None, **extra)


# ----------------------------------------------------------------------------- the table


def _mean(xs: list[float]) -> float:
    return statistics.mean(xs)


def _pm(xs: list[float], scale: float = 100.0) -> str:
    if len(xs) > 1:
        return f"{scale * statistics.mean(xs):.2f} ± {scale * statistics.stdev(xs):.2f}"
    return f"{scale * xs[0]:.2f}"


def _verdict(ok: bool) -> str:
    return "target met" if ok else "target NOT met"


def report(args: argparse.Namespace, res: dict[str, Any], td: Optional[dict], bare: Optional[list]) -> str:
    runs, lines = res["runs"], []
    ok_runs = {m: [r for r in seeds.values() if not r.get("failed")] for m, seeds in runs.items()}
    all_ok = [r for rs in ok_runs.values() for r in rs]
    if not all_ok:
        return "no run finished: nothing to report"
    seeds = ", ".join(map(str, args.seeds))
    first = next(iter(all_ok))
    teacher = [r["top1"]["teacher"] for r in all_ok][0]
    kd_runs = ok_runs.get("kd") or all_ok
    ref_baseline_s = _mean(
        [r["seconds"]["baseline"] for r in kd_runs if r["seconds"].get("baseline")] or [float("nan")]
    )
    ref_baseline_top1 = [r["top1"]["baseline"] for r in kd_runs if "baseline" in r["top1"]]
    lines.append(
        f"{args.config.name}: {'all' if not args.limit_train else args.limit_train} training images, "
        f"seed(s) {seeds} ({len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''}; mean ± std over seeds), "
        f"home {args.home}" + (f"; every run with --set {' '.join(args.set)}" if args.set else "")
    )
    p, f = first["params"], first["flops"]
    lines.append(
        f"teacher: test top-1 {100 * teacher:.2f} %, {p.get('teacher') or 0:,.0f} parameters, "
        f"{(f.get('teacher') or 0) / 1e6:.1f} MFLOP/sample, "
        + (
            f"given as --teacher-checkpoint {args.teacher_checkpoint}"
            if args.teacher_checkpoint
            else f"trained in {first['seconds']['teacher']:.0f} s (the first seed's run"
            f"{'; cached from an earlier run in this home' if first['cached']['teacher'] else ''})"
        )
    )
    lines.append(
        f"student: {p.get('student') or 0:,.0f} parameters, {(f.get('student') or 0) / 1e6:.2f} MFLOP/sample "
        f"({(f.get('teacher') or 0) / max(f.get('student') or 1, 1):.1f}x fewer FLOPs than the teacher)"
    )
    lines += [
        "",
        "| method | student test top-1 % | % of teacher | gain vs baseline (points) | features s | pretrain s "
        "| distill s | time to distilled student s | x baseline time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if ref_baseline_top1:
        lines.append(
            f"| baseline (CE, {len(ref_baseline_top1)} seed(s)) | {_pm(ref_baseline_top1)} "
            f"| {100 * _mean(ref_baseline_top1) / teacher:.1f} | — | — | — "
            f"| {ref_baseline_s:.1f} (training) | — | 1.00 |"
        )
    checks: list[str] = []
    rows: dict[str, dict[str, float]] = {}
    for method in args.methods:
        if method in res["missing"]:
            lines.append(f"| {method} | {res['missing'][method]} | | | | | | | |")
            continue
        rs = ok_runs.get(method, [])
        failed = len(runs.get(method, {})) - len(rs)
        if not rs:
            lines.append(f"| {method} | failed (see its log) | | | | | | | |")
            continue
        top = [r["top1"]["student"] for r in rs]
        gains = [100 * (r["top1"]["student"] - r["top1"]["baseline"]) for r in rs if "baseline" in r["top1"]]

        def sec(stage: str, rs: list[dict] = rs) -> float:
            return _mean([r["seconds"].get(stage) or 0.0 for r in rs])

        # later seeds find the first seed's cache entries (same teacher weights): the time of the build counts
        builds = [res.get("cache_build_s", {}).get(r["features_path"]) for r in rs]
        features_s = max([b for b in builds if b is not None] + [r["seconds"].get("features") or 0.0 for r in rs])
        ttd = features_s + sec("pretrain") + sec("distill")
        of_teacher = _mean(top) / teacher
        one = rs[0]  # the first seed that finished: the torchdistill comparison's seed
        rows[method] = {
            "top1": _mean(top),
            "gain": _mean(gains) if gains else float("nan"),
            "ttd": ttd,
            "first_top1": one["top1"]["student"],
            "first_ttd": features_s + sum(one["seconds"].get(k) or 0.0 for k in ("pretrain", "distill")),
        }
        gain_s = (
            (f"{_mean(gains):+.2f}" + (f" ± {statistics.stdev(gains):.2f}" if len(gains) > 1 else "")) if gains else "-"
        )
        lines.append(
            f"| {method}{f' ({failed} seed(s) failed)' if failed else ''} | {_pm(top)} | {100 * of_teacher:.1f} "
            f"| {gain_s} | {features_s:.1f} | {sec('pretrain'):.1f} | {sec('distill'):.1f} | {ttd:.1f} "
            f"| {ttd / ref_baseline_s:.2f} |"
        )
        ref_fps = {r["fingerprints"].get("baseline") for r in kd_runs}
        own_base = [r["seconds"].get("baseline") or 0.0 for r in rs if r["fingerprints"].get("baseline") not in ref_fps]
        checks.append(
            f"{method}: {100 * of_teacher:.1f} % of the teacher (>= {100 * TARGET_OF_TEACHER:.0f} %): "
            f"{_verdict(of_teacher >= TARGET_OF_TEACHER)}; gain {_mean(gains) if gains else float('nan'):+.2f} points "
            f"(>= +{TARGET_GAIN:.1f} over the baseline at the same epoch budget): "
            f"{_verdict(bool(gains) and _mean(gains) >= TARGET_GAIN)}; time {ttd:.1f} s = "
            f"{ttd / ref_baseline_s:.2f}x the baseline's {ref_baseline_s:.1f} s (<= {TARGET_TIME_X:.0f}x): "
            f"{_verdict(ttd <= TARGET_TIME_X * ref_baseline_s)}"
            + (f" (its own same-budget baseline trained {_mean(own_base):.1f} s)" if own_base else "")
        )
        verdicts = [(seed, r["verdict"]) for seed, r in runs.get(method, {}).items() if r.get("verdict")]
        if verdicts:  # what `kdflow run` itself said: McNemar on the test split, per seed
            paid = sum(v["pays"] for _, v in verdicts)
            checks.append(
                f"{method}: the pipeline's verdict: distillation paid on {paid} of {len(verdicts)} seed(s) ("
                + "; ".join(
                    f"seed {seed}: {100 * v['gain']:+.2f} ± {100 * v['margin']:.2f} points, p {v['p_value']:.3g}"
                    for seed, v in verdicts
                )
                + ")"
            )
    lines += [
        "",
        "features s / pretrain s / distill s: the stages' compute seconds (a cached stage: those of the run that "
        "computed it; features: the build of the cache entries the runs read, from MLflow), "
        "means over the seeds; time to distilled student = features + pretrain + distill; x baseline time: against the "
        "plain-trained baseline of the kd runs (same epochs, its training stage).",
    ]
    if (
        stages_side_by_side(args)
        and not args.teacher_checkpoint
        and first["cached"].get("baseline") is False
        and not first["cached"].get("teacher")
    ):
        lines.append("note: the first run's baseline trained beside the teacher (both slowed by the sharing).")
    lines += ["", "Targets (issue 12):", *("  " + c for c in checks)]
    every = [
        m
        for m, r in rows.items()
        if r["top1"] / teacher >= TARGET_OF_TEACHER
        and r["gain"] >= TARGET_GAIN
        and r["ttd"] <= TARGET_TIME_X * ref_baseline_s
    ]
    lines.append(f"  a student meeting all three: {', '.join(every) if every else 'none'}")
    lines += ["", *td_lines(td, rows, args)]
    lines += ["", *bare_lines(bare)]
    return "\n".join(lines)


def stages_side_by_side(args: argparse.Namespace) -> bool:
    """Whether the runs trained the teacher and the baseline at once (``trainer.concurrent_stages``;
    ``auto`` is one after the other on the CPU)."""
    from kdcore.config import load_config
    from tasks.stage import runs_concurrently

    return runs_concurrently(load_config(args.config, list(args.set)).trainer)


# vs_torchdistill.py's cached kdcore variants and what they set
CACHED_VARIANTS = {
    "kdflow-cached": "",
    "kdflow-cached-nhwc": ", trainer.channels_last",
    "kdflow-cached-bf16": ", trainer.amp bf16",
    "kdflow-cached-fast": ", bf16 + channels_last",
}


def td_lines(td: Optional[dict], rows: dict[str, dict[str, float]], args: argparse.Namespace) -> list[str]:
    if not args.torchdistill:
        return ["torchdistill comparison: not run (--no-torchdistill)"]
    if td is None:
        return ["torchdistill comparison: not run or failed (see above)"]
    r = td["results"]
    out = [
        "Time to a distilled student against torchdistill 1.1.5's online KD (same teacher checkpoint, "
        f"student, data, batch order and schedule; bench/vs_torchdistill.py, seed {args.seeds[0]}):"
    ]
    out.append("| variant | test top-1 % | time s | what the time is |")
    out.append("|---|---|---|---|")
    theirs = None
    if "torchdistill" in r:
        theirs = sum(r["torchdistill"]["epoch_seconds"])
        out.append(
            f"| torchdistill (teacher online) | {100 * r['torchdistill']['test_top1']:.2f} | {theirs:.1f} "
            "| training epochs only |"
        )
    else:
        out.append("| torchdistill | not run (.venv-bench missing: see bench/README.md) | | |")
    speed_targets = []  # kdflow's CPU speed settings against the target, when they ran
    for v, label in CACHED_VARIANTS.items():
        if v in r:
            k = r[v]
            ttd = k["cache_build_s"] + k["distill_s"]
            ratio = f", {ttd / theirs:.3f}x torchdistill" if theirs else ""
            out.append(
                f"| kdcore, cached{label} (same harness) | {100 * k['test_top1']:.2f} | {ttd:.1f} "
                f"| cache build {k['cache_build_s']:.1f} + distill {k['distill_s']:.1f} (validation included){ratio} |"
            )
            if theirs and label:
                x = ttd / theirs
                speed_targets.append(
                    f"time to a distilled student with{label.removeprefix(',')} (kdcore in the same harness) / "
                    f"torchdistill: {x:.3f} (<= {TARGET_VS_TD:.3f}): {_verdict(x <= TARGET_VS_TD)}"
                )
    for v in ("bare", "bare-cached", "kdflow"):
        if v in r:
            out.append(
                f"| {v} | {100 * r[v]['test_top1']:.2f} | {sum(r[v]['epoch_seconds']):.1f} | training epochs only |"
            )
    ours = rows["kd"]["first_ttd"] if "kd" in rows else None
    if ours is not None:
        out.append(
            f"| kdflow run, kd (pipeline, seed {args.seeds[0]}) | {100 * rows['kd']['first_top1']:.2f} | {ours:.1f} "
            "| features + pretrain + distill stages |"
        )
    if theirs and ours is not None:
        x = ours / theirs
        out.append(
            f"time to a distilled student, kdflow run / torchdistill: {ours:.1f} / {theirs:.1f} s = {x:.3f} "
            f"(<= {TARGET_VS_TD:.3f}): {_verdict(x <= TARGET_VS_TD)}"
        )
    return out + speed_targets


def bare_lines(bare: Optional[list[dict[str, Any]]]) -> list[str]:
    if bare is None:
        return ["bare-loop ratio per stage: not run (--no-bare-loop)"]
    if not bare:
        return ["bare-loop ratio per stage: bare_loop.py missing (bench/bare_loop.py)"]
    try:
        from bare_loop import table

        out = ["Training images/s per stage, bare loop vs kdcore vs kdflow run (bench/bare_loop.py):", table(bare)]
    except ImportError:
        out = ["bare-loop rows (bench/bare_loop.py):", *(json.dumps(r) for r in bare)]
    for r in bare:
        x = r.get("pipeline/bare")
        if x is not None:
            out.append(f"  {r['stage']}: pipeline / bare {x:.3f} (>= {TARGET_BARE}): {_verdict(x >= TARGET_BARE)}")
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_home = Path(os.environ.get("KDFLOW_HOME", ROOT / ".kdflow")) / "bench" / "full_fashion"
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the workload (default: %(default)s)")
    ap.add_argument("--home", type=Path, default=default_home, help="KDFLOW_HOME of every run (default: %(default)s)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="trainer.seed of the students (default: 0)")
    ap.add_argument("--limit-train", type=int, default=None, help="training images (smoke tests; default: all)")
    ap.add_argument(
        "--epochs", type=int, default=None, help="epochs of every student (smoke tests; default: the config's)"
    )
    ap.add_argument(
        "--teacher-epochs", type=int, default=None, help="teacher epochs (smoke tests; default: the config's)"
    )
    ap.add_argument(
        "--teacher-checkpoint",
        type=Path,
        default=None,
        help="the teacher of every run (teacher.checkpoint), e.g. HOME/runs/teacher/<fingerprint>/teacher.safetensors "
        "of an earlier run: a cached teacher stage is reused only while kdcore's code is unchanged",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a further override of every run")
    ap.add_argument(
        "--no-torchdistill", dest="torchdistill", action="store_false", help="skip the torchdistill comparison"
    )
    ap.add_argument(
        "--td-variants",
        nargs="+",
        default=["torchdistill", "kdflow-cached", "kdflow-cached-nhwc"],
        help="vs_torchdistill.py's variants (default: %(default)s)",
    )
    ap.add_argument("--no-bare-loop", dest="bare_loop", action="store_false", help="skip bench/bare_loop.py")
    ap.add_argument(
        "--bare-epochs", type=int, default=1, help="epochs per stage and round of bare_loop.py (default: 1)"
    )
    ap.add_argument("--bare-rounds", type=int, default=2, help="alternated rounds of bare_loop.py (default: 2)")
    ap.add_argument("--out", type=Path, default=None, help="run reports and logs (default: HOME/full_fashion_bench)")
    ap.add_argument("--json", type=Path, default=None, help="also write everything collected here")
    args = ap.parse_args(argv)
    args.config, args.home = args.config.resolve(), args.home.expanduser().resolve()
    if args.teacher_checkpoint:
        args.teacher_checkpoint = args.teacher_checkpoint.expanduser().resolve()
        if not args.teacher_checkpoint.is_file():
            ap.error(f"--teacher-checkpoint {str(args.teacher_checkpoint)!r} is not a file")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    from kdcore.errors import KdflowError

    try:
        for method in args.methods:  # every variant's config checked before the first run
            if method_overrides(method) is not None:
                variant_overrides(args, method, args.seeds[0], None)
    except KdflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    earlier = sorted((args.home / "runs" / "teacher").glob("*/teacher.safetensors"))
    if earlier and not args.teacher_checkpoint:
        print(
            f"note: {len(earlier)} teacher(s) trained in this home; the config's is reused only while kdcore's code is "
            f"the same as then (else --teacher-checkpoint PATH, e.g. {earlier[-1]})",
            flush=True,
        )
    out = args.out or args.home / "full_fashion_bench"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run_variants(args, out)
    td = None
    if args.torchdistill and res["teacher_checkpoint"]:
        td = vs_torchdistill(args, res["teacher_checkpoint"], out)
    bare = None
    if args.bare_loop:
        bare = bare_loop(args)
    text = report(args, res, td, bare)
    print("\n" + text + f"\n\nwhole benchmark: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"variants": res, "torchdistill": td, "bare_loop": bare, "report": text}, indent=2, default=str)
        )
    return 0 if any(not r.get("failed") for seeds in res["runs"].values() for r in seeds.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
