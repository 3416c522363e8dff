"""Champion / challenger in the MLflow model registry: the I/O and the Prefect task.

The rules (when a retrain is due, the seed of a fresh training, the promotion rule) are pure and
live in ``kdcore.evaluate.promotion_rules``; every registry read and write goes through
``tasks.tracking.Tracker``. Here:

- ``compare_task``: the challenger against the champion on the same held-out split: a pandas table
  of both versions' metrics from the registry (version tags and their source runs' metrics) and
  McNemar's test on per-sample correctness.
- ``apply_decision``: tags first, the alias last, so a run that fails anywhere moves no alias.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch
from prefect import task

from kdcore.config import PipelineConfig
from kdcore.errors import KdflowError
from kdcore.evaluate import per_sample_correct, predict
from kdcore.evaluate.promotion_rules import (
    CHALLENGER,
    CHAMPION,
    PROMOTED_AT,
    Decision,
    Version,
    decide,
    decision_tags,
    fresh_seed,
    retrain_reasons,
)
from kdcore.evaluate.significance import mcnemar_test
from kdcore.export import load_torchscript
from tasks.context import RunContext
from tasks.data import load_data
from tasks.tracking import Tracker

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PROMOTED_AT",
    "Decision",
    "Version",
    "apply_decision",
    "compare_task",
    "decide",
    "fresh_seed",
    "load_version_model",
    "retrain_reasons",
    "versions_table",
]


def load_version_model(tracker: Tracker, v: Version) -> torch.nn.Module:
    """The version's TorchScript export when it has one (no Python unpickling), else its PyTorch model."""
    uri = v.tags.get("kdflow.export_uri")
    with tempfile.TemporaryDirectory(prefix="kdflow-version-") as tmp:
        if uri:
            return load_torchscript(tracker.download(uri, Path(tmp)))
        return _ModeFree(tracker.load_pytorch_model(v.name, v.version, Path(tmp)))


class _ModeFree(torch.nn.Module):
    """A loaded model whose train/eval switch is a no-op: MLflow's default format (torch.export)
    gives a graph module that refuses ``eval()`` and is already in inference form."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def train(self, mode: bool = True) -> "_ModeFree":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def versions_table(tracker: Tracker, rows: dict[str, tuple[Version, float]]) -> pd.DataFrame:
    """One row per role (champion, challenger): registry facts, the source run's final metrics and
    the top-1 measured now on the held-out split."""
    out = {}
    for role, (v, top1) in rows.items():
        metrics = tracker.run_metrics(v.run_id)
        out[role] = {
            "version": v.version,
            "registered": v.created.strftime("%Y-%m-%d %H:%M"),
            "data": str(v.tags.get("kdflow.data_fingerprint", ""))[:12],
            "registered_test_top1": _float(v.tags.get("test_top1")),
            "final_val_top1": metrics.get("final_val_top1"),
            "final_val_loss": metrics.get("final_val_loss"),
            "heldout_top1": top1,
            "run_id": v.run_id,
        }
    table = pd.DataFrame.from_dict(out, orient="index")
    table.index.name = "role"
    return table


def _float(value: Any) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@task(name="compare")
def compare_task(cfg: dict, ctx: dict, champion: dict, challenger: dict, challenger_correct: list[bool]) -> dict:
    """The challenger (its per-sample correctness from the evaluate stage) against the champion
    (evaluated now, from the registry, on the same held-out split)."""
    config = PipelineConfig.model_validate(cfg)
    tracker = RunContext.from_dict(ctx).tracker()
    champ, chall = Version.from_dict(champion), Version.from_dict(challenger)
    data = load_data(config.data)
    model = load_version_model(tracker, champ)
    logits = predict(model, data.test.x, batch_size=config.evaluate.batch_size)
    champ_correct = per_sample_correct(logits, data.test.y).tolist()
    if len(challenger_correct) != len(champ_correct):
        raise KdflowError(
            f"the challenger was evaluated on {len(challenger_correct)} samples but the held-out split "
            f"has {len(champ_correct)}; no alias was moved"
        )
    test = mcnemar_test(challenger_correct, champ_correct)  # a = challenger, b = champion
    table = versions_table(tracker, {CHAMPION: (champ, test.accuracy_b), CHALLENGER: (chall, test.accuracy_a)})
    return {
        "mcnemar": test.as_dict(),
        "delta_top1": test.accuracy_a - test.accuracy_b,
        "table": json.loads(table.reset_index().to_json(orient="records")),
    }


def apply_decision(tracker: Tracker, name: str, decision: Decision, flow_run_id: str) -> None:
    """Record the decision on the challenger version, then move exactly one alias (or none)."""
    if decision.action in ("skip", "unchanged") or decision.challenger is None:
        return
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tracker.set_version_tags(name, decision.challenger, decision_tags(decision, flow_run_id, now))
    tracker.set_model_tags(name, {"kdflow.last_retrain": json.dumps(asdict(decision))})
    if decision.action == "promote":
        tracker.set_alias(name, CHAMPION, decision.challenger)
        held = tracker.version_by_alias(name, CHALLENGER)
        if held is not None and held.version == decision.challenger:
            tracker.delete_alias(name, CHALLENGER)
    else:
        tracker.set_alias(name, CHALLENGER, decision.challenger)
