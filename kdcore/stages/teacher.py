"""Stage `teacher`: train the teacher with cross-entropy, or load a given checkpoint."""

from __future__ import annotations

import torch.nn.functional as F

from kdcore.models import weights_summary
from kdcore.stages.env import StageEnv, StageResult, fit_summary
from kdcore.train import fit
from kdcore.train.batches import BatchSource
from kdcore.train.checkpoint import load_teacher
from kdcore.train.rng import step_seed


def train_teacher(env: StageEnv) -> StageResult:
    cfg = env.cfg.teacher
    if cfg.checkpoint:
        model = _load_given(env)
        fit_result = None
        info = {"source": "checkpoint", "checkpoint": cfg.checkpoint}
    else:
        model = env.build(cfg.arch, cfg.kwargs, seed_offset=0)
        source: int | BatchSource
        if env.streaming:  # a fresh augmented view of every image each epoch, seeded by (seed, epoch, index)
            seed = env.cfg.trainer.seed
            source = env.train_source(lambda epoch, idx: [(i, step_seed(seed, epoch, i)) for i in idx.tolist()])

            def step(b):
                return F.cross_entropy(model(b.x), b.y), {}
        else:
            x, y = env.split("train")
            source = len(x)

            def step(idx):
                return F.cross_entropy(model(x[idx]), y[idx]), {}

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
            callbacks=env.callbacks,
            run_key=str(env.workdir),
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


def _load_given(env: StageEnv):
    cfg = env.cfg.teacher
    assert cfg.checkpoint is not None  # called only when the config names one
    model = load_teacher(cfg.checkpoint, cfg.arch, cfg.kwargs, env.data.in_channels, env.data.num_classes)
    return model.to(env.device)
