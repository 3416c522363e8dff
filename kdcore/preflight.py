"""Checks a configuration against the registries before any work starts.

Everything that can be known without data is checked here: names of datasets, models, losses;
model keyword arguments; feature module paths; the teacher checkpoint's presence; the device.
"""
from __future__ import annotations

from pathlib import Path

from kdcore.config import PipelineConfig
from kdcore.errors import ConfigError, KdflowError


def preflight(cfg: PipelineConfig) -> None:
    """Raise one ConfigError listing every problem found, or return None."""
    from kdcore.data import DATASETS
    from kdcore.hooks import module_paths
    from kdcore.losses import build_objective
    from kdcore.models import create_model
    from kdcore.train.device import resolve_device

    problems: list[str] = []

    def check(label: str, fn):
        try:
            return fn()
        except KdflowError as exc:
            problems.append(f"{label}: {exc}")
            return None

    check("data.name", lambda: DATASETS.get(cfg.data.name))
    teacher = check("teacher.arch", lambda: create_model(cfg.teacher.arch, in_channels=3, num_classes=10,
                                                          **cfg.teacher.kwargs))
    student = check("student.arch", lambda: create_model(cfg.student.arch, in_channels=3, num_classes=10,
                                                          **cfg.student.kwargs))
    objective = check("distill.losses", lambda: build_objective(cfg.distill.objective_spec()))
    check("trainer.device", lambda: resolve_device(cfg.trainer.device))
    if cfg.teacher.checkpoint and not Path(cfg.teacher.checkpoint).is_file():
        problems.append(f"teacher.checkpoint: file {cfg.teacher.checkpoint!r} does not exist")

    wanted_t = list(cfg.cache.features)
    wanted_s: list[str] = []
    if cfg.pretrain.method == "hint":
        wanted_t += [p.teacher for p in cfg.pretrain.pairs]
        wanted_s += [p.student for p in cfg.pretrain.pairs]
    if objective is not None:
        wanted_t += objective.teacher_paths
        wanted_s += objective.student_paths
    for model, role, wanted in ((teacher, "teacher", wanted_t), (student, "student", wanted_s)):
        if model is None:
            continue
        valid = set(module_paths(model))
        bad = [p for p in dict.fromkeys(wanted) if p not in valid]
        if bad:
            problems.append(f"{role} module path(s) {', '.join(map(repr, bad))} not found in {getattr(model, 'kdflow_spec', {}).get('arch')}; "
                            f"valid paths: {', '.join(sorted(valid))}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
