"""Stages `pretrain`, `distill` and `baseline`: the student's three ways of being trained."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.cache import CacheEntry
from kdcore.hooks import FeatureTap, probe_shapes
from kdcore.losses import KDInputs, build_objective
from kdcore.models.transplant import init_from_teacher
from kdcore.stages.env import _INIT_LOCK, StageEnv, StageResult, classifier_val, fit_summary
from kdcore.train import fit
from kdcore.train.checkpoint import load_model, save_model


class TeacherSource:
    """Teacher logits/features for a batch of train indices: from the cache or computed online."""

    def __init__(self, env: StageEnv, entry: Optional[CacheEntry], teacher: Optional[nn.Module], paths: list[str]):
        self.env, self.entry, self.teacher, self.paths = env, entry, teacher, paths
        if entry is None and teacher is None:
            raise ValueError("a TeacherSource needs a cache entry or a teacher")
        if entry is not None:  # the logits are small: keep them on the device
            self._logits = {s: entry.tensor(s, "logits").to(env.device) for s in ("train", "val")}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self.entry is not None:
            return {p: tuple(self.entry.manifest["shapes"][p]) for p in self.paths}
        return probe_shapes(self.teacher, self.paths, self.env.split("train")[0][:2])

    def get(self, split: str, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.entry is not None:
            feats = {p: self.entry.tensor(split, p, idx).to(self.env.device, non_blocking=True) for p in self.paths}
            return self._logits[split][idx.to(self._logits[split].device)], feats
        x, _ = self.env.split(split)
        self.teacher.eval()
        with FeatureTap(self.teacher, self.paths) as tap, torch.no_grad():
            logits = self.teacher(x[idx]).float()
            return logits, {p: tap.features[p].float() for p in self.paths}


def _train_with_objective(env: StageEnv, student: nn.Module, spec_losses: dict[str, Any], train_spec,
                          source: Optional[TeacherSource], stage: str, monitor_objective: bool = False):
    objective = build_objective(spec_losses)
    x, y = env.split("train")
    xv, yv = env.split("val")
    s_paths = objective.student_paths
    s_shapes = probe_shapes(student, s_paths, x[:2]) if s_paths else {}
    t_shapes = source.shapes() if (source is not None and objective.teacher_paths) else {}
    with _INIT_LOCK:  # connectors are initialised from the seeded global RNG
        env.seed(2)
        objective.build(s_shapes, t_shapes)
    objective.to(env.device)

    def run(split: str, idx: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor):
        t_logits, t_feats = (source.get(split, idx) if source is not None and objective.needs_teacher
                             else (None, {}))
        with FeatureTap(student, s_paths) as tap:
            logits = student(xs[idx])
            inp = KDInputs(student_logits=logits.float(), teacher_logits=t_logits, targets=ys[idx],
                           student_features={p: tap.features[p].float() for p in s_paths},
                           teacher_features=t_feats)
        return objective(inp)

    def step(idx):
        return run("train", idx.to(x.device), x, y)

    def evaluate() -> dict[str, float]:
        out = classifier_val(student, xv, yv)
        if monitor_objective:
            with torch.no_grad():
                idx = torch.arange(len(xv), device=xv.device)
                total = sum(float(run("val", b, xv, yv)[0]) * len(b) for b in idx.split(1024))
            out["val_loss"] = total / max(len(xv), 1)
        return out

    if monitor_objective:
        train_spec = train_spec.model_copy(update={"monitor": "val_loss"})
    result = fit({"model": student, "objective": objective}, step, len(x), evaluate, train_spec,
                 ckpt_dir=env.workdir / "checkpoints", seed=env.cfg.trainer.seed, device=env.device,
                 amp_dtype=env.amp_dtype, callbacks=env.callbacks, run_key=str(env.workdir), stage=stage)
    return result, objective


def _finish(env: StageEnv, student: nn.Module, stage: str, info: dict[str, Any], fit_result=None) -> StageResult:
    metrics = classifier_val(student, *env.split("val"))
    path = env.workdir / "student.safetensors"
    sha = save_model(student, path, {"stage": stage, "data_fingerprint": env.data.fingerprint})
    return StageResult(path, sha, metrics, info, fit_result, student)


def pretrain_student(env: StageEnv, source: Optional[TeacherSource], teacher: Optional[nn.Module]) -> StageResult:
    """Hint training of the student's lower layers, or initialisation from the teacher's layers."""
    cfg = env.cfg.pretrain
    student = env.new_student()
    info: dict[str, Any] = {"method": cfg.method}
    fit_result = None
    if cfg.method == "teacher_layers":
        copied = init_from_teacher(student, teacher, mapping=cfg.mapping, select=cfg.select)
        info["copied_tensors"] = len(copied)
    elif cfg.method == "hint":
        pairs = [p.model_dump() for p in cfg.pairs]
        fit_result, _ = _train_with_objective(
            env, student, {"fitnet": {"weight": 1.0, "pairs": pairs, "connector": cfg.connector}}, cfg.train,
            source, "pretrain", monitor_objective=True)
        info.update(fit_summary(fit_result))
    return _finish(env, student, "pretrain", info, fit_result)


def distill_student(env: StageEnv, init_path: Path, source: TeacherSource) -> StageResult:
    student = load_model(init_path).to(env.device)
    fit_result, objective = _train_with_objective(env, student, env.cfg.distill.objective_spec(),
                                                  env.cfg.distill.train, source, "distill")
    info = {"weights": objective.weights, **fit_summary(fit_result)}
    return _finish(env, student, "distill", info, fit_result)


def train_baseline(env: StageEnv) -> StageResult:
    """The same student from the same initialisation, trained with cross-entropy alone."""
    student = env.new_student()
    fit_result, _ = _train_with_objective(env, student, {"ce": {"weight": 1.0}}, env.cfg.baseline_train(),
                                          None, "baseline")
    return _finish(env, student, "baseline", fit_summary(fit_result), fit_result)
