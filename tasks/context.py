"""The run context: where a flow's stages put things and which MLflow run they hang under.

One object instead of a dict built by every flow. It crosses Prefect task boundaries as a plain
dict (``as_dict`` / ``from_dict``) so task parameters stay JSON and cache keys stay stable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

from tasks.home import kdflow_home
from tasks.tracking import Tracker, check_reachable
from tasks.uris import default_tracking_uri


@dataclass(frozen=True)
class RunContext:
    home: Path
    tracking_uri: str
    experiment_id: str
    parent_run_id: Optional[str] = None

    @classmethod
    def open(cls, experiment: str, home: Optional[str | Path] = None) -> "RunContext":
        """KDFLOW_HOME (or ``home``), its tracking store checked reachable, ``experiment`` created if
        needed; no parent run yet (see :meth:`under`)."""
        home_path = Path(home) if home else kdflow_home()
        uri = default_tracking_uri(home_path)
        check_reachable(uri)
        return cls(home_path, uri, Tracker(uri, home_path).experiment_id(experiment))

    def under(self, parent_run_id: Optional[str]) -> "RunContext":
        """The same context with runs opened as children of ``parent_run_id``."""
        return replace(self, parent_run_id=parent_run_id)

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.home)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["home"] = str(self.home)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | "RunContext") -> "RunContext":
        if isinstance(d, RunContext):
            return d
        return cls(Path(d["home"]), d["tracking_uri"], d["experiment_id"], d.get("parent_run_id"))
