"""Stage `evaluate`: teacher, baseline and distilled student on the held-out test split."""

from __future__ import annotations

from torch import nn

from kdcore.evaluate import classification_metrics, model_profile, per_sample_correct, predict
from kdcore.stages.env import StageEnv


def evaluate_models(env: StageEnv, models: dict[str, nn.Module], reference: str = "teacher") -> dict[str, dict]:
    """Metrics of each model on the test split; agreement is measured against ``reference``."""
    cfg = env.cfg.evaluate
    x, y = env.data.test.x, env.data.test.y
    if not env.streaming:  # in memory: the whole split on the device once; streamed: decoded by a loader
        x = x.to(env.device)
    logits = {name: predict(m, x, batch_size=cfg.batch_size, device=env.device).cpu() for name, m in models.items()}
    ref = logits.get(reference)
    out: dict[str, dict] = {}
    for name, model in models.items():
        metrics = classification_metrics(logits[name], y, teacher_logits=ref if name != reference else None)
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
