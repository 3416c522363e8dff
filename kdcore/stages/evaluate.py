"""Stage `evaluate`: teacher, baseline and distilled student on the held-out test split, and how
well each fits a fixed sample of the training split (the images it learned from)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdcore.evaluate import model_profile, predict
from kdcore.stages.env import StageEnv

#: the seed of the training sample evaluate measures fit on: the same rows whatever trainer.seed is,
#: so versions trained with different seeds are compared on the same images
FIT_SAMPLE_SEED = 0


def fit_sample(n_train: int, size: int) -> Tensor:
    """Sorted row indices of ``size`` training samples (all of them when ``size >= n_train``),
    spread over the split by a fixed seed (a split stored class by class is sampled evenly)."""
    if size >= n_train:
        return torch.arange(n_train)
    g = torch.Generator().manual_seed(FIT_SAMPLE_SEED)
    return torch.randperm(n_train, generator=g)[:size].sort().values


def evaluate_models(env: StageEnv, models: dict[str, nn.Module], reference: str = "teacher") -> dict[str, dict]:
    """Metrics of each model on the test split; agreement is measured against ``reference``.
    With ``evaluate.fit_samples`` > 0 each model's metrics also hold ``train_top1`` (and, but for the
    reference, ``train_agreement``) on that many training samples."""
    from kdcore.evaluate.metrics import classification_metrics, per_sample_correct  # torchmetrics: seconds to import

    cfg = env.cfg.evaluate
    x, y = env.data.test.x, env.data.test.y
    if not env.streaming:  # in memory: the whole split on the device once; streamed: decoded by a loader
        x = x.to(env.device)
    logits = {name: predict(m, x, batch_size=cfg.batch_size, device=env.device).cpu() for name, m in models.items()}
    fit = _fit_metrics(env, models, reference) if cfg.fit_samples > 0 else {}
    ref = logits.get(reference)
    out: dict[str, dict] = {}
    for name, model in models.items():
        metrics = classification_metrics(logits[name], y, teacher_logits=ref if name != reference else None)
        metrics.update(fit.get(name, {}))
        metrics.update(
            model_profile(
                model,
                tuple(env.data.input_shape),
                example=env.data.test.x[0],
                latency=cfg.latency,
                throughput_batch=cfg.throughput_batch,
                min_run_time=cfg.min_run_time,
            )
        )
        out[name] = {"metrics": metrics, "correct": per_sample_correct(logits[name], y).tolist()}
    return out


def _fit_metrics(env: StageEnv, models: dict[str, nn.Module], reference: str) -> dict[str, dict[str, float]]:
    """``train_top1`` and ``train_agreement`` of each model on the fit sample of the training split,
    read ``evaluate.batch_size`` rows at a time (a streamed split decodes just those rows, once for
    all the models)."""
    cfg = env.cfg.evaluate
    rows = fit_sample(len(env.data.train), cfg.fit_samples)
    top: dict[str, list[Tensor]] = {name: [] for name in models}
    for chunk in rows.split(cfg.batch_size):
        x = env.data.train.x[chunk].to(env.device)
        for name, m in models.items():
            top[name].append(predict(m, x, batch_size=cfg.batch_size, device=env.device).argmax(1))
    y = env.data.train.y[rows]
    answers = {name: torch.cat(parts) for name, parts in top.items()}
    out: dict[str, dict[str, float]] = {}
    for name in models:
        out[name] = {"train_top1": (answers[name] == y).float().mean().item()}
        if name != reference and reference in answers:
            out[name]["train_agreement"] = (answers[name] == answers[reference]).float().mean().item()
    return out
