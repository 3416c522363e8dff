"""Champion / challenger in the MLflow model registry.

- ``retrain_reasons``: why a retrain is due (no champion, forced, data changed, champion too old).
- ``compare_task``: the challenger against the champion on the same held-out split: a pandas table
  of both versions' metrics from the registry (version tags and their source runs' metrics) and
  McNemar's test on per-sample correctness.
- ``decide``: the promotion rule (better by the margin AND significantly so).
- ``apply_decision``: tags first, the alias last, so a run that fails anywhere moves no alias.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import mlflow.artifacts
import mlflow.pytorch
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from prefect import task

from kdcore.config import PipelineConfig
from kdcore.errors import KdflowError
from kdcore.evaluate import per_sample_correct, predict
from kdcore.evaluate.significance import mcnemar_test
from kdcore.export import load_torchscript
from tasks.data import load_data
from tasks.tracking import _LOCK, Tracker, process_uri

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTED_AT = "kdflow.promoted_at"


@dataclass
class Version:
    """A registered model version, as much of it as the decisions need."""

    name: str
    version: str
    run_id: Optional[str]
    created: datetime
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def since(self) -> datetime:
        """When it became champion (the tag), else when it was registered."""
        stamp = self.tags.get(PROMOTED_AT)
        if stamp:
            try:
                return datetime.fromisoformat(stamp)
            except ValueError:
                pass
        return self.created

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "created": self.created.isoformat()}


def _version(mv: Any) -> Version:
    created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, tz=timezone.utc)
    return Version(mv.name, str(mv.version), mv.run_id, created, dict(mv.tags or {}))


def version_by_alias(tracker: Tracker, name: str, alias: str) -> Optional[Version]:
    with _LOCK:
        try:
            return _version(tracker.client.get_model_version_by_alias(name, alias))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise


def get_version(tracker: Tracker, name: str, version: str) -> Version:
    with _LOCK:
        return _version(tracker.client.get_model_version(name, version))


def retrain_reasons(champion: Optional[Version], data_fingerprint: str, max_age_days: Optional[float],
                    force: bool, now: Optional[datetime] = None) -> list[str]:
    """Why a retrain is due; an empty list means it is not."""
    now = now or datetime.now(timezone.utc)
    reasons = []
    if force:
        reasons.append("forced")
    if champion is None:
        reasons.append("no champion yet")
        return reasons
    theirs = champion.tags.get("kdflow.data_fingerprint")
    if theirs != data_fingerprint:
        reasons.append(f"data changed (champion v{champion.version} was trained on {str(theirs)[:12]}, "
                       f"the data now is {data_fingerprint[:12]})")
    if max_age_days is not None:
        age_days = (now - champion.since).total_seconds() / 86400
        if age_days > max_age_days:
            reasons.append(f"champion v{champion.version} is {age_days:.1f} days old (limit {max_age_days:g})")
    return reasons


# ---------------------------------------------------------------------------------------------
# Comparing two versions


def load_version_model(tracker: Tracker, v: Version) -> torch.nn.Module:
    """The version's TorchScript export when it has one (no Python unpickling), else its PyTorch model."""
    uri = v.tags.get("kdflow.export_uri")
    with tempfile.TemporaryDirectory(prefix="kdflow-version-") as tmp:
        if uri:
            with _LOCK:
                local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracker.uri)
            return load_torchscript(local)
        saved_path = list(sys.path)  # the model's code_paths are prepended to sys.path while loading
        try:
            with process_uri(tracker.uri):
                return _ModeFree(mlflow.pytorch.load_model(f"models:/{v.name}/{v.version}", dst_path=tmp))
        finally:
            sys.path[:] = saved_path


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


def _run_metrics(tracker: Tracker, run_id: Optional[str]) -> dict[str, float]:
    if not run_id:
        return {}
    with _LOCK:
        try:
            return dict(tracker.client.get_run(run_id).data.metrics)
        except MlflowException:
            return {}


def versions_table(tracker: Tracker, rows: dict[str, tuple[Version, float]]) -> pd.DataFrame:
    """One row per role (champion, challenger): registry facts, the source run's final metrics and
    the top-1 measured now on the held-out split."""
    out = {}
    for role, (v, top1) in rows.items():
        metrics = _run_metrics(tracker, v.run_id)
        out[role] = {
            "version": v.version, "registered": v.created.strftime("%Y-%m-%d %H:%M"),
            "data": str(v.tags.get("kdflow.data_fingerprint", ""))[:12],
            "registered_test_top1": _float(v.tags.get("test_top1")),
            "final_val_top1": metrics.get("final_val_top1"), "final_val_loss": metrics.get("final_val_loss"),
            "heldout_top1": top1, "run_id": v.run_id,
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
    tracker = Tracker(ctx["tracking_uri"], Path(ctx["home"]))
    champ = Version(**{**champion, "created": datetime.fromisoformat(champion["created"])})
    chall = Version(**{**challenger, "created": datetime.fromisoformat(challenger["created"])})
    data = load_data(config.data)
    model = load_version_model(tracker, champ)
    logits = predict(model, data.test.x, batch_size=config.evaluate.batch_size)
    champ_correct = per_sample_correct(logits, data.test.y).tolist()
    if len(challenger_correct) != len(champ_correct):
        raise KdflowError(f"the challenger was evaluated on {len(challenger_correct)} samples but the held-out split "
                          f"has {len(champ_correct)}; no alias was moved")
    test = mcnemar_test(challenger_correct, champ_correct)  # a = challenger, b = champion
    table = versions_table(tracker, {CHAMPION: (champ, test.accuracy_b), CHALLENGER: (chall, test.accuracy_a)})
    return {"mcnemar": test.as_dict(), "delta_top1": test.accuracy_a - test.accuracy_b,
            "table": json.loads(table.reset_index().to_json(orient="records"))}


@dataclass
class Decision:
    action: str  # "promote", "keep", "unchanged", "skip"
    reason: str
    champion_before: Optional[str] = None
    challenger: Optional[str] = None
    delta_top1: Optional[float] = None
    p_value: Optional[float] = None

    @property
    def champion_after(self) -> Optional[str]:
        return self.challenger if self.action == "promote" else self.champion_before


def decide(delta_top1: float, p_value: float, min_improvement: float, alpha: float) -> tuple[bool, str]:
    """Promote only when the challenger is better by at least the margin AND significantly so."""
    gain = f"held-out top-1 {delta_top1:+.4f}"
    if delta_top1 <= 0:
        return False, f"the challenger is not better ({gain})"
    if delta_top1 < min_improvement:
        return False, f"the gain is below the margin ({gain} < {min_improvement:g})"
    if not p_value < alpha:
        return False, f"the gain is not significant ({gain}, McNemar p = {p_value:.3g} >= {alpha:g})"
    return True, f"better by the margin and significantly ({gain}, McNemar p = {p_value:.3g} < {alpha:g})"


def apply_decision(tracker: Tracker, name: str, decision: Decision, flow_run_id: str) -> None:
    """Record the decision on the challenger version, then move exactly one alias (or none)."""
    if decision.action in ("skip", "unchanged") or decision.challenger is None:
        return
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tags = {"kdflow.retrain.decision": decision.action, "kdflow.retrain.reason": decision.reason,
            "kdflow.retrain.compared_with": decision.champion_before or "",
            "kdflow.retrain.delta_top1": "" if decision.delta_top1 is None else f"{decision.delta_top1:.6f}",
            "kdflow.retrain.p_value": "" if decision.p_value is None else f"{decision.p_value:.6g}",
            "kdflow.retrain.prefect_flow_run_id": flow_run_id, "kdflow.retrain.at": now}
    if decision.action == "promote":
        tags[PROMOTED_AT] = now
    with _LOCK:
        for key, value in tags.items():
            tracker.client.set_model_version_tag(name, decision.challenger, key, value[:5000])
        tracker.client.set_registered_model_tag(name, "kdflow.last_retrain", json.dumps(asdict(decision))[:5000])
        if decision.action == "promote":
            tracker.client.set_registered_model_alias(name, CHAMPION, decision.challenger)
            try:
                if tracker.client.get_model_version_by_alias(name, CHALLENGER).version == decision.challenger:
                    tracker.client.delete_registered_model_alias(name, CHALLENGER)
            except MlflowException:
                pass
        else:
            tracker.client.set_registered_model_alias(name, CHALLENGER, decision.challenger)


def wait_for_version(tracker: Tracker, name: str, version: str, timeout: float = 60.0) -> Version:
    """A freshly registered version can be PENDING_REGISTRATION for a moment; wait until READY."""
    deadline = time.monotonic() + timeout
    while True:
        with _LOCK:
            mv = tracker.client.get_model_version(name, version)
        if mv.status == "READY" or time.monotonic() > deadline:
            if mv.status != "READY":
                raise KdflowError(f"model version {name}/{version} is {mv.status}, not READY; no alias was moved")
            return _version(mv)
        time.sleep(0.5)
