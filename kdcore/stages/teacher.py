"""Stage `teacher`: train the teacher with cross-entropy, or load a given checkpoint."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdcore.data.augment import apply_views, view_opts, view_seeds
from kdcore.errors import ConfigError
from kdcore.models import weights_summary
from kdcore.stages.env import StageEnv, StageResult, fit_summary
from kdcore.tensors import on_device
from kdcore.train import fit
from kdcore.train.batches import BatchSource
from kdcore.train.callbacks import BeforeEachEpoch
from kdcore.train.checkpoint import load_teacher
from kdcore.train.rng import step_seed

AUGMENT_STREAMED = (
    "teacher.augment applies to images held in memory; these are streamed from disk, where data.augment "
    "sets the teacher's augmentation"
)


def train_teacher(env: StageEnv) -> StageResult:
    cfg = env.cfg.teacher
    if cfg.checkpoint:
        model = _load_given(env)
        fit_result = None
        info = {"source": "checkpoint", "checkpoint": cfg.checkpoint}
    else:
        model = env.build(cfg.arch, cfg.kwargs, seed_offset=0)
        source: int | BatchSource
        callbacks = env.callbacks
        if env.streaming and cfg.augment.policy != "none":
            raise ConfigError(AUGMENT_STREAMED)
        if env.streaming:  # a fresh augmented view of every image each epoch, seeded by (seed, epoch, index)
            seed = env.cfg.trainer.seed
            source = env.train_source(lambda epoch, idx: [(i, step_seed(seed, epoch, i)) for i in idx.tolist()])

            def step(b):
                return F.cross_entropy(model(b.x), b.y), {}
        else:
            x, y = env.split("train")
            source = len(x)
            augment = _EpochAugment(len(x), env.cfg.trainer.seed, cfg.augment.model_dump(mode="json"))
            if augment.active:
                callbacks = BeforeEachEpoch(env.callbacks, augment.draw)

            def step(idx):
                at = on_device(idx, x.device)  # one copy of the indices for inputs and labels
                return F.cross_entropy(model(augment(x, idx, at)), y[on_device(at, y.device)]), {}

        fit_result = fit(
            {"model": model},
            step,
            source,
            lambda: env.val_metrics(model),
            cfg.train,
            ckpt_dir=env.workdir / "checkpoints",
            seed=env.cfg.trainer.seed,
            device=env.device,
            amp_dtype=env.amp_dtype,
            callbacks=callbacks,
            run_key=str(env.workdir),
            keep_checkpoints=env.cfg.trainer.keep_checkpoints,
            stage="teacher",
        )
        info = {
            "source": "trained",
            **weights_summary(getattr(model, "kdflow_weights", None)),
            **fit_summary(fit_result),
        }
    metrics = env.val_metrics(model)
    path = env.workdir / "teacher.safetensors"
    sha, files = env.save_model(model, path, "teacher")
    return StageResult(path, sha, metrics, info, fit_result, model, files)


class _EpochAugment:
    """A fresh view of every training image each epoch: one seed per (epoch, sample), drawn from the
    trainer seed, so a resumed or repeated run sees the same views."""

    def __init__(self, n: int, seed: int, spec: dict) -> None:
        self.n, self.seed, self.spec = n, seed, spec
        self.active = spec["policy"] != "none"
        self.seeds = torch.zeros(n, dtype=torch.long)

    def draw(self, epoch: int) -> None:
        self.seeds = torch.from_numpy(view_seeds(self.n, 1, step_seed(self.seed, epoch, 0))[:, 0])

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        """The epoch's views of samples ``idx`` (``at``: the same indices on ``x``'s device)."""
        if not self.active:
            return x[at]
        return apply_views(x[at], self.seeds[idx.cpu()], self.spec["policy"], self.spec["pad"], **view_opts(self.spec))


def _load_given(env: StageEnv):
    cfg = env.cfg.teacher
    assert cfg.checkpoint is not None  # called only when the config names one
    model = load_teacher(cfg.checkpoint, cfg.arch, cfg.kwargs, env.data.in_channels, env.data.num_classes)
    return env.place(model)
