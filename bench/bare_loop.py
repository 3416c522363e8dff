"""Training speed of each stage: a bare PyTorch loop, kdcore's stage function, and `kdflow run`.

For one config (default configs/full_fashion.yaml) and each training stage (teacher, baseline,
distill) this measures training images per second three ways, on the same model architecture,
data tensors, batch size and order, optimiser (SGD with Nesterov momentum, weight decay), cosine
schedule and thread count:

  bare      a minimal loop written here: index the tensors, forward, loss, backward, step. The
            distillation loop reads the teacher's logits from one precomputed tensor and uses the
            configured loss (ce + T^2 KL, the config's weights and temperature).
  kdcore    kdcore's stage functions called alone (train_teacher, build_features + distill_student
            from the cache, train_baseline), no Prefect and no MLflow.
  pipeline  `kdflow run` on the same config (ephemeral Prefect server, a fresh KDFLOW_HOME): the
            per-epoch ``samples_per_s`` each stage logged to MLflow.

Only training time counts (validation, checkpoints and callbacks at the end of an epoch excluded),
the same way for all three: kdcore's ``samples_per_s`` is the epoch's samples over the time from
the epoch's start to its last optimiser step and scheduler step, and the bare loop times the same
span. The figure per stage is the median over epochs and rounds. Each variant runs in its own
subprocess with the same environment (OMP/MKL threads and ``trainer.num_threads`` set); rounds
alternate the order of the variants so a drift of the machine's load hits all of them alike. In
the pipeline the baseline trains beside the teacher and the distillation branch unless the flow
schedules otherwise: a stage whose MLflow run overlapped another training stage's is marked in
the table.

Allocator: kdcore's stages keep glibc's heap between steps (kdcore/train/allocator.py); the bare
loop runs with the C library's defaults, as a loop written without kdflow does, unless
``--bare-allocator kept`` gives it kdcore's settings too (then the ratios leave the allocator out).
bench/allocator.py measures what the setting alone is worth.

The bare distillation loop supports the ``kd`` and ``ce`` losses and no augmented views
(``cache.views.policy: none``), which is what configs/full_fashion.yaml uses.

Usage:
  python bench/bare_loop.py [--config configs/full_fashion.yaml] [--limit-train 5000] [--epochs 2]
      [--threads 2] [--stages teacher baseline distill] [--variants bare kdcore pipeline] [--rounds 2]
      [--bare-allocator system|kept]

``measure(config_path, overrides, epochs, limit_train, threads)`` returns the table's rows (dicts)
for other benchmarks (bench/full_fashion.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGES = ("teacher", "baseline", "distill")
VARIANTS = ("bare", "kdcore", "pipeline")
DEFAULT_CONFIG = ROOT / "configs" / "full_fashion.yaml"
BARE_ALLOCATORS = ("system", "kept")  # the C library's defaults, or kdcore's kept heap


# ----------------------------------------------------------------------------- the config


def _overrides(overrides: Sequence[str], epochs: Optional[int], limit_train: Optional[int], threads: Optional[int]):
    out = list(overrides)
    if limit_train:
        out.append(f"data.limit_train={limit_train}")
    if epochs:
        out += [f"teacher.train.max_epochs={epochs}", f"distill.train.max_epochs={epochs}"]
    if threads:
        out.append(f"trainer.num_threads={threads}")
    return out


def load(config: str, overrides: Sequence[str]):
    from kdcore.config import load_config

    return load_config(config, list(overrides))


# ----------------------------------------------------------------------------- bare loops


def _bare_fit(model, spec, x, y, loss_fn, seed: int) -> list[float]:
    """A minimal loop with kdflow's optimiser, schedule and batch order; images/s of every epoch."""
    import torch

    from kdcore.train.batches import shuffled_batches

    opt = torch.optim.SGD(
        model.parameters(),
        lr=spec.lr,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
        nesterov=spec.momentum > 0,
    )
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.max_epochs) if spec.scheduler == "cosine" else None
    )
    rates = []
    for epoch in range(spec.max_epochs):
        model.train()
        t0 = time.perf_counter()
        n_seen = 0
        for idx in shuffled_batches(len(x), spec.batch_size, seed, epoch):
            loss = loss_fn(model(x[idx]), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n_seen += len(idx)
        if sched is not None:
            sched.step()
        rates.append(n_seen / (time.perf_counter() - t0))
        model.eval()
        with torch.no_grad():  # validation, untimed, as the other variants do it
            for i in range(0, len(x), 1024):
                model(x[i : i + 1024])
    return rates


def run_bare(cfg, stages: Sequence[str], work: Path, allocator: str = "system") -> dict[str, list[float]]:
    import torch
    import torch.nn.functional as F

    if allocator == "kept":
        from kdcore.train.allocator import keep_heap

        keep_heap()

    from kdcore.data import load_dataset
    from kdcore.models import create_model
    from kdcore.train import seed_everything

    if cfg.cache.views.policy != "none":
        raise SystemExit("bench/bare_loop.py: the bare loop has no augmented views (cache.views.policy: none)")
    data = load_dataset(cfg.data)
    x, y = data.train.x, data.train.y
    seed = cfg.trainer.seed

    def build(arch, kwargs, offset):
        seed_everything(seed + offset)
        return create_model(arch, in_channels=data.in_channels, num_classes=data.num_classes, **kwargs)

    out: dict[str, list[float]] = {}
    teacher = build(cfg.teacher.arch, cfg.teacher.kwargs, 0)
    if "teacher" in stages:
        out["teacher"] = _bare_fit(
            teacher, cfg.teacher.train, x, y, lambda logits, idx: F.cross_entropy(logits, y[idx]), seed
        )
    if "baseline" in stages:
        student = build(cfg.student.arch, cfg.student.kwargs, 1)
        out["baseline"] = _bare_fit(
            student, cfg.baseline_train(), x, y, lambda logits, idx: F.cross_entropy(logits, y[idx]), seed
        )
    if "distill" in stages:
        losses = cfg.distill.objective_spec()
        if set(losses) - {"kd", "ce"}:
            raise SystemExit(
                f"bench/bare_loop.py: the bare loop knows kd and ce, not {sorted(set(losses) - {'kd', 'ce'})}"
            )
        w_kd = float(losses.get("kd", {}).get("weight", 0.0)) if "kd" in losses else 0.0
        w_ce = float(losses.get("ce", {}).get("weight", 1.0)) if "ce" in losses else 0.0
        t = float(losses.get("kd", {}).get("temperature", cfg.distill.temperature)) if "kd" in losses else 1.0
        teacher.eval()
        with torch.no_grad():  # the "cache": one tensor of teacher logits
            t_logits = torch.cat([teacher(x[i : i + 1024]) for i in range(0, len(x), 1024)])

        def kd_loss(logits, idx):
            kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(t_logits[idx] / t, dim=1), reduction="batchmean")
            return w_ce * F.cross_entropy(logits, y[idx]) + w_kd * t * t * kl

        student = build(cfg.student.arch, cfg.student.kwargs, 1)
        out["distill"] = _bare_fit(student, cfg.distill.train, x, y, kd_loss, seed)
    return out


# ----------------------------------------------------------------------------- kdcore alone


def run_kdcore(cfg, stages: Sequence[str], work: Path) -> dict[str, list[float]]:
    from kdcore.data import load_dataset
    from kdcore.stages import (
        StageEnv,
        TeacherSource,
        build_features,
        pretrain_student,
        teacher_paths,
        train_baseline,
        train_teacher,
    )

    data = load_dataset(cfg.data)

    def env(stage: str) -> StageEnv:
        return StageEnv(cfg, data, work / stage)

    out: dict[str, list[float]] = {}

    def rates(res) -> list[float]:
        return [h["samples_per_s"] for h in res.fit.history]

    if "teacher" in stages or "distill" in stages:
        res = train_teacher(env("teacher"))
        if "teacher" in stages:
            out["teacher"] = rates(res)
        teacher = res.model
    if "baseline" in stages:
        out["baseline"] = rates(train_baseline(env("baseline")))
    if "distill" in stages:
        from kdcore.stages import distill_student

        built = build_features(env("features"), teacher, res.sha256 or "teacher", work / "cache")
        init = pretrain_student(env("pretrain"), None, None)
        denv = env("distill")
        source = TeacherSource(denv, {s: e for s, (e, _) in built.items()}, None, teacher_paths(cfg))
        out["distill"] = rates(distill_student(denv, init.path, source))
    return out


# ----------------------------------------------------------------------------- the pipeline


def run_pipeline(config: str, overrides: Sequence[str], stages: Sequence[str], work: Path) -> dict[str, Any]:
    """`kdflow run` in a subprocess on a fresh KDFLOW_HOME; the stages' logged rates from MLflow."""
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    cmd = [sys.executable, "-m", "flows.cli", "run", str(config), "--quiet", "--ephemeral"]
    for o in overrides:
        cmd += ["--set", o]
    # a loaded machine can take longer than Prefect's default 20 s to start the ephemeral server
    env = dict(os.environ, KDFLOW_HOME=str(home), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"kdflow run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    runs = stage_runs(client)
    out: dict[str, Any] = {}
    spans = {s: (r.info.start_time, r.info.end_time or r.info.start_time) for s, r in runs.items()}
    for stage in stages:
        if stage not in runs:
            continue
        hist = sorted(client.get_metric_history(runs[stage].info.run_id, "samples_per_s"), key=lambda m: m.step)
        out[stage] = [m.value for m in hist]
        a0, a1 = spans[stage]
        out[f"{stage}_overlapped"] = sorted(o for o, (b0, b1) in spans.items() if o != stage and b0 < a1 and a0 < b1)
    return out


def stage_runs(client) -> dict[str, Any]:
    """The MLflow run of each training stage in a home's store (``client``: its MlflowClient)."""
    runs = {}
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id]):
            stage = r.data.tags.get("kdflow.stage")
            if stage in STAGES:
                runs[stage] = r
    return runs


# ----------------------------------------------------------------------------- driver


def child_env(threads: Optional[int]) -> dict[str, str]:
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(PYTHONHASHSEED="0", PYTHONPATH=str(ROOT))
    return env


def run_variant(
    variant: str, config: str, overrides: list[str], stages: list[str], work: Path, bare_allocator: str = "system"
) -> dict[str, Any]:
    import torch

    cfg = load(config, overrides)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    work.mkdir(parents=True, exist_ok=True)
    if variant == "bare":
        return run_bare(cfg, stages, work, bare_allocator)
    if variant == "kdcore":
        return run_kdcore(cfg, stages, work)
    return run_pipeline(config, overrides, stages, work)


def measure(
    config_path: str | Path = DEFAULT_CONFIG,
    overrides: Sequence[str] = (),
    epochs: Optional[int] = 2,
    limit_train: Optional[int] = 5000,
    threads: Optional[int] = None,
    *,
    stages: Sequence[str] = STAGES,
    variants: Sequence[str] = VARIANTS,
    rounds: int = 2,
    workdir: Optional[Path] = None,
    bare_allocator: str = "system",
    log=print,
) -> list[dict[str, Any]]:
    """One row per stage: the median images/s of each variant and their ratios to the bare loop."""
    ovr = _overrides(overrides, epochs, limit_train, threads)
    cfg = load(str(config_path), ovr)  # a bad config fails here, once
    threads = threads or cfg.trainer.num_threads
    own = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="kdflow-bare-loop-"))
    samples: dict[str, dict[str, list[float]]] = {v: {s: [] for s in stages} for v in variants}
    overlapped: dict[str, set[str]] = {s: set() for s in stages}
    try:
        for rnd in range(rounds):
            order = list(variants) if rnd % 2 == 0 else list(reversed(variants))
            for v in order:
                out = work / f"{v}-{rnd}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", v, "--config", str(config_path)]
                run_dir = work / f"{v}-{rnd}"  # fresh: a stage would resume from an earlier round's checkpoints
                shutil.rmtree(run_dir, ignore_errors=True)
                cmd += ["--work", str(run_dir), "--out", str(out), "--stages", *stages]
                cmd += ["--bare-allocator", bare_allocator]
                for o in ovr:
                    cmd += ["--set", o]
                t0 = time.perf_counter()
                subprocess.run(cmd, env=child_env(threads), check=True, cwd=str(ROOT))
                r = json.loads(out.read_text())
                for s in stages:
                    samples[v][s] += r.get(s, [])
                    overlapped[s] |= set(r.get(f"{s}_overlapped", []))
                log(
                    f"round {rnd + 1} {v:<8} "
                    + "  ".join(f"{s} {', '.join(f'{x:.0f}' for x in r.get(s, []))}" for s in stages)
                    + f" img/s  ({time.perf_counter() - t0:.0f} s)"
                )
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    rows = []
    for s in stages:
        row: dict[str, Any] = {"stage": s, "threads": threads, "train_images": len_train(cfg), "epochs": epochs}
        for v in variants:
            row[v] = statistics.median(samples[v][s]) if samples[v][s] else None
            row[f"{v}_epochs"] = len(samples[v][s])
        for v in variants:
            if v != "bare":
                row[f"{v}/bare"] = row[v] / row["bare"] if row.get("bare") and row[v] else None
        if "pipeline" in variants:
            row["overlapped"] = sorted(overlapped[s])
        rows.append(row)
    return rows


def len_train(cfg) -> Optional[int]:
    return cfg.data.limit_train


def table(rows: list[dict[str, Any]]) -> str:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [
        "| stage | bare img/s | kdcore img/s | pipeline img/s | kdcore / bare | pipeline / bare "
        "| pipeline overlapped |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {f(r.get('bare'), '.0f')} | {f(r.get('kdcore'), '.0f')} | {f(r.get('pipeline'), '.0f')} "
            f"| {f(r.get('kdcore/bare'), '.3f')} | {f(r.get('pipeline/bare'), '.3f')} "
            f"| {', '.join(r.get('overlapped') or []) or '-'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--limit-train", type=int, default=5000, help="training images (0: all)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of every training stage (0: the config's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the config's trainer.num_threads)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument(
        "--bare-allocator",
        default="system",
        choices=BARE_ALLOCATORS,
        help="the bare loop's heap: the C library's defaults (system), or kdcore's kept heap (kept)",
    )
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # set in the re-executed children
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        r = run_variant(args.variant, args.config, args.overrides, args.stages, Path(args.work), args.bare_allocator)
        Path(args.out).write_text(json.dumps(r))
        return
    rows = measure(
        args.config,
        args.overrides,
        args.epochs or None,
        args.limit_train or None,
        args.threads or None,
        stages=args.stages,
        variants=args.variants,
        rounds=args.rounds,
        workdir=Path(args.workdir) if args.workdir else None,
        bare_allocator=args.bare_allocator,
    )
    print()
    print(
        f"{args.config}: {rows[0]['train_images'] or 'all'} training images, {rows[0]['epochs'] or 'configured'} "
        f"epochs, {rows[0]['threads']} thread(s); images/s, median over epochs of {args.rounds} alternated round(s); "
        f"the bare loop's allocator: {args.bare_allocator}"
    )
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
