"""Stages `pretrain`, `distill` and `baseline`: the student's three ways of being trained."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from kdcore.cache import CacheEntry
from kdcore.data.augment import epoch_views, replay_views, view_seeds
from kdcore.hooks import FeatureTap, probe_shapes
from kdcore.losses import KDInputs, build_objective, with_temperature
from kdcore.models.transplant import TransplantReport, transplant
from kdcore.stages.env import StageEnv, StageResult, fit_summary, fp32
from kdcore.stages.features import split_mixing, split_views
from kdcore.tensors import NO_CONTEXT, as_float32, on_device
from kdcore.train import fit
from kdcore.train.callbacks import BeforeEachEpoch
from kdcore.train.checkpoint import load_model
from kdcore.train.rng import GLOBAL_RNG


def device_rows_budget(device: torch.device) -> int:
    """Bytes of cached teacher outputs a run on ``device`` may keep there: 1/16 of a CUDA device's
    memory, at most 2 GiB (1 GiB on other accelerators); the rest is read per batch on the host."""
    if device.type == "cuda":
        return min(torch.cuda.get_device_properties(device).total_memory // 16, 2 << 30)
    return 1 << 30


class TeacherSource:
    """Teacher logits/features for a batch of train indices at given views: read from the cache
    entries of each split, or computed online from the same augmented images."""

    def __init__(
        self, env: StageEnv, entries: Optional[dict[str, CacheEntry]], teacher: Optional[nn.Module], paths: list[str]
    ):
        self.env, self.entries, self.teacher, self.paths = env, entries, teacher, paths
        if entries is None and teacher is None:
            raise ValueError("a TeacherSource needs cache entries or a teacher")
        if teacher is not None:
            teacher.eval()
        self._device_rows: dict[tuple[str, str], Optional[torch.Tensor]] = {}
        self._split_rows: dict[str, Optional[tuple[int, dict[str, torch.Tensor]]]] = {}
        # the rows are gathered where the step runs, as a bare loop keeps its teacher's outputs
        # (:meth:`_on_device`); ``rows_on_device`` off reads them per batch on the host instead, as a
        # memory-mapped entry always is (tests turn the switches to run every path on the CPU)
        self.rows_on_device = True
        self.share_host_rows = env.device.type == "cpu"
        self.device_budget = device_rows_budget(env.device)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (e.g. to DDP ranks) without the rows copied to this process's device."""
        return {**self.__dict__, "_device_rows": {}, "_split_rows": {}}

    def _on_device(self, split: str, name: str) -> Optional[torch.Tensor]:
        """A stored array as rows ``[N * V, ...]`` where the step runs, or None (read per batch on
        the host). On the CPU (``share_host_rows``) a view of the entry's own memory, no copy, when
        it holds the array in memory as stored (not top-k). On an accelerator a float32 copy made
        once, when the entry holds the array in memory and it fits in what is left of
        ``device_budget``. The values are the same whichever way they are read."""
        key = (split, name)
        if key in self._device_rows:
            return self._device_rows[key]
        assert self.entries is not None  # only asked for cached runs
        entry, rows = self.entries[split], None
        if self.share_host_rows:
            rows = entry.rows_view(name)
        else:
            stored = "logits.values" if name == "logits" and entry.manifest.get("topk") else name
            size = 4 * entry.manifest["count"] * entry.num_views * math.prod(entry.shapes()[name])
            if entry.held_in_memory(stored) and size <= self.device_budget:
                full = entry.read_all(name)
                rows = full.reshape(-1, *full.shape[2:]).to(self.env.device)
                self.device_budget -= size
        self._device_rows[key] = rows
        return rows

    def _held(self, split: str) -> Optional[tuple[int, dict[str, torch.Tensor]]]:
        """(views per sample, rows of the logits and of each feature path) of a split, gathered
        where the step runs, or None where any is read per batch; looked up once per split."""
        if split not in self._split_rows:
            assert self.entries is not None  # only asked for cached runs
            held = (
                {name: self._on_device(split, name) for name in ["logits", *self.paths]} if self.rows_on_device else {}
            )
            rows = {name: t for name, t in held.items() if t is not None}
            whole = self.rows_on_device and len(rows) == len(held)
            self._split_rows[split] = (self.entries[split].num_views, rows) if whole else None
        return self._split_rows[split]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self.entries is not None:
            return {p: self.entries["train"].shapes()[p] for p in self.paths}
        assert self.teacher is not None  # __init__: entries or a teacher
        return probe_shapes(self.teacher, self.paths, self.env.example("train"))

    def seeds(self, split: str, n: int) -> np.ndarray:
        """The view seeds of a split: those stored with the entry, else recomputed identically."""
        if self.entries is not None:
            return self.entries[split].seeds()
        views = split_views(self.env.cfg, split)
        return view_seeds(n, views["num_views"], views["seed"])

    def mixing(self, split: str, n: int) -> Optional[dict[str, np.ndarray]]:
        """The mixing arrays of a split's views: those stored with the entry, else drawn identically."""
        if self.entries is not None:
            return self.entries[split].mixing()
        return split_mixing(self.env, split, n, split_views(self.env.cfg, split))

    def crops(self, split: str) -> Optional[np.ndarray]:
        """The crops ``[N, V, 5]`` the teacher saw, when a streamed cache stored them (else None)."""
        return self.entries[split].view_crops() if self.entries is not None else None

    def get(
        self, split: str, idx: torch.Tensor, views: Optional[torch.Tensor], x_view: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Teacher outputs for samples ``idx`` at ``views`` (None: the first, the only one there is);
        ``x_view`` is the student's input batch."""
        dev = self.env.device
        if self.entries is not None:
            held = self._held(split)
            if held is not None:
                num_views, rows = held
                at = idx if idx.device.type == "cpu" else idx.cpu()
                if num_views > 1:  # the row of (sample, view); one view: the sample's own row
                    at = at * num_views if views is None else at * num_views + views.cpu()
                at = on_device(at, dev)
                out = {name: as_float32(t[at]) for name, t in rows.items()}
                return out.pop("logits"), out
            entry = self.entries[split]
            logits = on_device(entry.read("logits", idx, views), dev)
            return logits, {p: on_device(entry.read(p, idx, views), dev) for p in self.paths}
        assert self.teacher is not None  # __init__: entries or a teacher
        if self.teacher.training:  # the root's flag: eval() walks every module, too slow for each step
            self.teacher.eval()
        # the teacher runs in float32 even inside an autocast training step: its outputs are exact.
        # Only what the step needs: no tap without paths, no autocast switch outside autocast (each
        # is host time per step that a bare loop does not spend, which a small model on a GPU waits on)
        tap = FeatureTap(self.teacher, self.paths) if self.paths else None
        exact = fp32(dev) if torch.is_autocast_enabled(dev.type) else NO_CONTEXT
        with tap or NO_CONTEXT, torch.no_grad(), exact:
            logits = as_float32(self.teacher(as_float32(x_view)))
            return logits, {p: as_float32(tap.features[p]) for p in self.paths} if tap is not None else {}


class _EpochViews:
    """Which stored view every training sample shows this epoch (drawn at each epoch's start)."""

    def __init__(self, n: int, num_views: int, seed: int) -> None:
        self.n, self.num_views, self.seed = n, num_views, seed
        self.views = torch.zeros(n, dtype=torch.long)

    def __call__(self, epoch: int) -> None:
        self.views = epoch_views(self.n, self.num_views, self.seed, epoch)

    def of(self, idx: torch.Tensor) -> Optional[torch.Tensor]:
        """The views of samples ``idx`` this epoch; None when there is one view (the first, always)."""
        return None if self.num_views == 1 else self.views[idx]


def _train_with_objective(
    env: StageEnv,
    student: nn.Module,
    spec_losses: dict[str, Any],
    train_spec,
    source: Optional[TeacherSource],
    stage: str,
    monitor_objective: bool = False,
):
    objective = build_objective(spec_losses)
    n = len(env.data.train)
    s_paths = objective.student_paths
    s_shapes = probe_shapes(student, s_paths, env.example("train")) if s_paths else {}
    t_shapes = source.shapes() if (source is not None and objective.teacher_paths) else {}
    with GLOBAL_RNG:  # connectors are initialised from the seeded global RNG
        env.seed(2)
        objective.build(s_shapes, t_shapes, num_samples=n)
    objective.to(env.device)
    vcfg = env.cfg.cache.views
    train_seeds = torch.from_numpy(
        source.seeds("train", n) if source is not None else view_seeds(n, vcfg.num_views, vcfg.seed)
    )
    train_spec_views = split_views(env.cfg, "train")
    train_mixing = source.mixing("train", n) if source is not None else split_mixing(env, "train", n, train_spec_views)
    chosen = _EpochViews(n, vcfg.num_views, vcfg.seed)
    teaching = source if source is not None and objective.needs_teacher else None  # asked once, not per step
    callbacks = BeforeEachEpoch(env.callbacks, chosen)

    def run(
        split: str,
        idx: torch.Tensor,
        xb: torch.Tensor,
        yb: torch.Tensor,
        views: Optional[torch.Tensor],
        mix: tuple[Optional[torch.Tensor], Optional[torch.Tensor]] = (None, None),
    ):
        """The objective on one batch: ``xb`` the (augmented) inputs of samples ``idx`` at ``views``
        (None: one view); ``mix`` the partners' labels and own weights of mixed inputs."""
        t_logits, t_feats = teaching.get(split, idx, views, xb) if teaching is not None else (None, {})
        # no student features wanted: no tap (its hooks would put every forward on torch's slow path)
        with FeatureTap(student, s_paths) if s_paths else NO_CONTEXT as tap:
            logits = student(xb)
            inp = KDInputs(
                student_logits=as_float32(logits),
                teacher_logits=t_logits,
                targets=yb,
                student_features={p: as_float32(tap.features[p]) for p in s_paths} if tap is not None else {},
                teacher_features=t_feats,
                indices=idx if split == "train" else None,
                mix_targets=mix[0],
                mix_lam=mix[1],
            )
        return objective(inp)

    if env.streaming:  # the loader cuts each sample's view of the epoch: a stored crop, else from its seed
        crops = source.crops("train") if source is not None else None

        seeds = train_seeds.numpy()

        def items(epoch: int, idx: torch.Tensor) -> list[Any]:
            """(sample, its stored crop or its view's seed) for a batch, gathered at once (the
            loader's batches of an epoch are all made at its start)."""
            i, v = idx.numpy(), chosen.views[idx].numpy()  # the views set for this epoch by on_epoch_start
            return list(zip(i.tolist(), (crops if crops is not None else seeds)[i, v].tolist()))

        batches: Any = env.train_source(items)

        def step(b):
            return run("train", b.idx, b.x, b.y, chosen.of(b.idx))

        def val_loss() -> float:
            total = sum(
                float(run("val", b.idx, b.x, b.y, torch.zeros_like(b.idx))[0]) * len(b) for b in env.eval_batches("val")
            )
            return total / max(len(env.data.val), 1)
    else:
        x, y = env.split("train")
        xv, yv = env.split("val")
        batches = len(x)

        def gather(split: str, idx: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, views: Optional[torch.Tensor]):
            if split != "train" or (vcfg.policy == "none" and train_mixing is None):
                di = on_device(idx, xs.device)  # one copy of the indices for inputs and labels
                return run(split, idx, xs[di], ys[on_device(di, ys.device)], views)
            views = torch.zeros_like(idx) if views is None else views
            r = replay_views(xs, idx, views, train_seeds, train_mixing, train_spec_views)
            mix = (None, None) if r.partner is None else (ys[r.partner.to(ys.device)], r.lam)
            return run(split, idx, r.x, ys[idx.to(ys.device)], views, mix)

        def step(idx):
            return gather("train", idx, x, y, chosen.of(idx))

        def val_loss() -> float:
            idx = torch.arange(len(xv))
            total = sum(float(gather("val", b, xv, yv, torch.zeros_like(b))[0]) * len(b) for b in idx.split(1024))
            return total / max(len(xv), 1)

    def evaluate() -> dict[str, float]:
        out = env.val_metrics(student)
        if monitor_objective:
            with torch.no_grad():
                out["val_loss"] = val_loss()
        return out

    if monitor_objective:
        train_spec = train_spec.model_copy(update={"monitor": "val_loss"})
    result = fit(
        {"model": student, "objective": objective},
        step,
        batches,
        evaluate,
        train_spec,
        ckpt_dir=env.workdir / "checkpoints",
        seed=env.cfg.trainer.seed,
        device=env.device,
        amp_dtype=env.amp_dtype,
        callbacks=callbacks,
        run_key=str(env.workdir),
        keep_checkpoints=env.cfg.trainer.keep_checkpoints,
        stage=stage,
    )
    return result, objective


def _finish(env: StageEnv, student: nn.Module, stage: str, info: dict[str, Any], fit_result=None) -> StageResult:
    metrics = env.val_metrics(student)
    path = env.workdir / "student.safetensors"
    sha, files = env.save_model(student, path, stage)
    return StageResult(path, sha, metrics, info, fit_result, student, files)


def pretrain_objective_spec(cfg) -> dict[str, dict[str, Any]]:
    """The objective that trains the new or reshaped layers of a student made from teacher layers."""
    spec = cfg.pretrain.losses or {"ce": {"weight": 0.1}, "kd": {"weight": 0.9}}
    return with_temperature(spec, cfg.distill.temperature)


def _train_new_layers(
    env: StageEnv,
    student: nn.Module,
    report: TransplantReport,
    source: Optional[TeacherSource],
    teacher: Optional[nn.Module],
):
    """Train what did not come whole from the teacher (new and sliced tensors), the rest frozen."""
    cfg = env.cfg.pretrain
    params = dict(student.named_parameters())
    frozen = [n for n in report.copied if n in params] if cfg.freeze_copied else []
    if len(frozen) == len(params):
        return None  # every tensor came whole from the teacher: nothing new to train
    spec = pretrain_objective_spec(env.cfg)
    if source is None and teacher is not None:  # no cache given: run the teacher online
        source = TeacherSource(env, None, teacher.to(env.device), build_objective(spec).teacher_paths)
    for n in frozen:
        params[n].requires_grad_(False)
    try:
        fit_result, _ = _train_with_objective(env, student, spec, cfg.train, source, "pretrain")
    finally:
        for n in frozen:
            params[n].requires_grad_(True)
    return fit_result


def pretrain_student(env: StageEnv, source: Optional[TeacherSource], teacher: Optional[nn.Module]) -> StageResult:
    """Hint training of the student's lower layers, or initialisation from the teacher's layers
    (with the new or reshaped layers then trained for ``pretrain.train`` while the copied ones stay
    frozen)."""
    cfg = env.cfg.pretrain
    student = env.new_student()
    info: dict[str, Any] = {"method": cfg.method}
    fit_result = None
    if cfg.method == "teacher_layers":
        assert teacher is not None, "pretrain.method teacher_layers needs the teacher model"
        report = transplant(student, teacher, mapping=cfg.mapping, select=cfg.select, partial=cfg.partial)
        info.update(copied_tensors=len(report.copied), sliced_tensors=len(report.sliced))
        fit_result = _train_new_layers(env, student, report, source, teacher)
        info["trained_new_layers"] = fit_result is not None
        if fit_result is not None:
            info.update(fit_summary(fit_result))
    elif cfg.method == "hint":
        pairs = [p.model_dump() for p in cfg.pairs]
        fit_result, _ = _train_with_objective(
            env,
            student,
            {"fitnet": {"weight": 1.0, "pairs": pairs, "connector": cfg.connector}},
            cfg.train,
            source,
            "pretrain",
            monitor_objective=True,
        )
        info.update(fit_summary(fit_result))
    return _finish(env, student, "pretrain", info, fit_result)


def distill_student(env: StageEnv, init_path: Path, source: TeacherSource) -> StageResult:
    student = env.place(load_model(init_path))
    fit_result, objective = _train_with_objective(
        env, student, env.cfg.distill.objective_spec(), env.cfg.distill.train, source, "distill"
    )
    info = {"weights": objective.weights, **fit_summary(fit_result)}
    return _finish(env, student, "distill", info, fit_result)


def train_baseline(env: StageEnv) -> StageResult:
    """The same student from the same initialisation, trained with cross-entropy alone."""
    student = env.new_student()
    fit_result, _ = _train_with_objective(
        env, student, {"ce": {"weight": 1.0}}, env.cfg.baseline_train(), None, "baseline"
    )
    return _finish(env, student, "baseline", fit_summary(fit_result), fit_result)
