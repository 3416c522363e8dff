"""The record a stage task returns: small, JSON-serialisable, enough to find its artifact again."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from kdcore.stages import StageResult


class StageRecord(BaseModel):
    stage: str
    fingerprint: str
    path: Optional[str] = None
    sha256: Optional[str] = None
    metrics: dict[str, float] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)
    mlflow_run_id: Optional[str] = None
    model_uri: Optional[str] = None
    seconds: float = 0.0

    def artifact_ok(self) -> bool:
        """The artifact this record points to still exists (a cached record is only reused then)."""
        return self.path is None or Path(self.path).exists()

    def required(self, name: Literal["path", "sha256", "mlflow_run_id", "model_uri"]) -> str:
        """A field the stage always records (a model's path, its logged model URI...), as a ``str``."""
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"the {self.stage} stage recorded no {name}")
        return value


def record_fields(result: "StageResult", model_uri: Optional[str] = None) -> dict[str, Any]:
    """What a stage body contributes to its record, from the kdcore stage function's result (the
    task adds stage, fingerprint, MLflow run and timing)."""
    return {
        "path": None if result.path is None else str(result.path),
        "sha256": result.sha256,
        "metrics": result.metrics,
        "info": result.info,
        "model_uri": model_uri,
    }
