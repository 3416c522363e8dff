"""Champion / challenger rules, pure: when a retrain is due, which seed a fresh training uses, and
whether a challenger replaces the champion. No MLflow here: the registry's facts arrive as
:class:`Version` values (read by ``tasks.tracking.Tracker``) and the decisions leave as
:class:`Decision` values (applied by ``tasks.promotion``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Optional

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTED_AT = "kdflow.promoted_at"
SEED_TAG = "kdflow.seed"
FORCED = "forced"


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

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Version":
        return cls(**{**d, "created": datetime.fromisoformat(d["created"])})


@dataclass
class Decision:
    action: str  # "promote", "keep", "unchanged", "skip"
    reason: str
    champion_before: Optional[str] = None
    challenger: Optional[str] = None
    delta_top1: Optional[float] = None
    p_value: Optional[float] = None
    seed: Optional[int] = None  # trainer.seed of a fresh training (forced or aged retrain on unchanged data)

    @property
    def champion_after(self) -> Optional[str]:
        return self.challenger if self.action == "promote" else self.champion_before


def data_changed(champion: Optional[Version], data_fingerprint: str) -> bool:
    return champion is not None and champion.tags.get("kdflow.data_fingerprint") != data_fingerprint


def retrain_reasons(
    champion: Optional[Version],
    data_fingerprint: str,
    max_age_days: Optional[float],
    force: bool,
    now: Optional[datetime] = None,
) -> list[str]:
    """Why a retrain is due; an empty list means it is not."""
    now = now or datetime.now(timezone.utc)
    reasons = []
    if force:
        reasons.append(FORCED)
    if champion is None:
        reasons.append("no champion yet")
        return reasons
    if data_changed(champion, data_fingerprint):
        theirs = champion.tags.get("kdflow.data_fingerprint")
        reasons.append(
            f"data changed (champion v{champion.version} was trained on {str(theirs)[:12]}, "
            f"the data now is {data_fingerprint[:12]})"
        )
    if max_age_days is not None:
        age_days = (now - champion.since).total_seconds() / 86400
        if age_days > max_age_days:
            reasons.append(f"champion v{champion.version} is {age_days:.1f} days old (limit {max_age_days:g})")
    return reasons


def fresh_seed(
    reasons: list[str], reproduces_champion: bool, config_seed: int, versions: Iterable[Version]
) -> Optional[int]:
    """The ``trainer.seed`` a retrain must use to train afresh, or None to keep the configured one.

    A retrain that is due (forced, or the champion is old) while the pipeline would reproduce the
    champion (``reproduces_champion``: same data, config and code, so the same distill fingerprint)
    would find every stage cached and register nothing new. Forcing means a fresh training instead:
    a seed no registered version of the model was trained with (one above the largest recorded
    ``kdflow.seed``, or the configured seed), which changes every training stage's fingerprint.
    When anything else changed, the changed stages rerun anyway and the configured seed stays."""
    if not reasons or not reproduces_champion:
        return None
    used = [config_seed]
    for v in versions:
        try:
            used.append(int(v.tags[SEED_TAG]))
        except (KeyError, ValueError):
            pass
    return max(used) + 1


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


def decision_tags(decision: Decision, flow_run_id: str, now: str) -> dict[str, str]:
    """The tags a decision leaves on the challenger version."""
    tags = {
        "kdflow.retrain.decision": decision.action,
        "kdflow.retrain.reason": decision.reason,
        "kdflow.retrain.compared_with": decision.champion_before or "",
        "kdflow.retrain.delta_top1": "" if decision.delta_top1 is None else f"{decision.delta_top1:.6f}",
        "kdflow.retrain.p_value": "" if decision.p_value is None else f"{decision.p_value:.6g}",
        "kdflow.retrain.prefect_flow_run_id": flow_run_id,
        "kdflow.retrain.at": now,
    }
    if decision.seed is not None:
        tags["kdflow.retrain.seed"] = str(decision.seed)
    if decision.action == "promote":
        tags[PROMOTED_AT] = now
    return tags
