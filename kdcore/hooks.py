"""Take intermediate features by module path with forward hooks (models' forward stays untouched)."""
from __future__ import annotations

from types import TracebackType
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from kdcore.errors import KdflowError


def module_paths(model: nn.Module) -> list[str]:
    """Dotted paths of every submodule of ``model`` (the root itself excluded)."""
    return [name for name, _ in model.named_modules() if name]


class FeatureTap:
    """Context manager recording the outputs of the modules at ``paths`` into ``self.features``.

    >>> with FeatureTap(model, ["layer2", "layer3.0.relu"]) as tap:
    ...     logits = model(x)
    >>> tap.features["layer2"].shape
    """

    def __init__(self, model: nn.Module, paths: Sequence[str]):
        modules = dict(model.named_modules())
        unknown = [p for p in paths if not p or p not in modules]
        if unknown:
            valid = ", ".join(module_paths(model)) or "(none)"
            raise KdflowError(f"unknown module path {unknown[0]!r}; valid paths: {valid}")
        self.model = model
        self.paths = list(dict.fromkeys(paths))
        self._modules = {p: modules[p] for p in self.paths}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.features: dict[str, Tensor] = {}

    def _hook(self, path: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.features[path] = output

        return record

    def __enter__(self) -> "FeatureTap":
        self.features = {}
        self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self._modules.items()]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def probe_shapes(model: nn.Module, paths: Sequence[str], example: Tensor) -> dict[str, tuple[int, ...]]:
    """Per-sample output shapes (batch dim removed) of the modules at ``paths`` for input ``example``.

    Runs one eval-mode, no-grad forward pass and restores the model's training mode.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTap(model, paths) as tap:
            model(example)
    finally:
        model.train(was_training)
    missing = [p for p in paths if p not in tap.features]
    if missing:
        raise KdflowError(f"module {missing[0]!r} did not run during the forward pass; pick another path")
    return {p: tuple(tap.features[p].shape[1:]) for p in paths}
