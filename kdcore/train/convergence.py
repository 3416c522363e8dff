"""The convergence criterion: max epochs, patience/min_delta on a validation metric, a target."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class Convergence:
    monitor: str = "val_top1"
    max_epochs: int = 10
    patience: Optional[int] = None
    min_delta: float = 0.0
    target: Optional[float] = None
    best: Optional[float] = None
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[float] = field(default_factory=list)

    @property
    def maximize(self) -> bool:
        return not self.monitor.endswith("loss")

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best + self.min_delta if self.maximize else value < self.best - self.min_delta

    def update(self, epoch: int, value: float) -> Optional[str]:
        """Record this epoch's monitored value; return why training should stop, or None."""
        self.history.append(value)
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        if self.target is not None and (value >= self.target if self.maximize else value <= self.target):
            return f"target {self.monitor} {self.target} reached ({value:.4f}) at epoch {epoch}"
        if self.patience is not None and self.bad_epochs >= self.patience:
            return (
                f"no {self.monitor} improvement > {self.min_delta} for {self.patience} epochs "
                f"(best {self.best:.4f} at epoch {self.best_epoch})"
            )
        if epoch + 1 >= self.max_epochs:
            return f"max_epochs {self.max_epochs} reached"
        return None

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "Convergence":
        return cls(**state)
