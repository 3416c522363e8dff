"""Take intermediate features by module path with forward hooks (models' forward stays untouched)."""

from __future__ import annotations

import difflib
from types import TracebackType
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from kdcore.errors import KdflowError


def module_paths(model: nn.Module) -> list[str]:
    """Dotted paths of every submodule of ``model`` (the root itself excluded)."""
    return [name for name, _ in model.named_modules() if name]


FULL_LIST_MAX = 60  # models with more module paths than this get a shortened list in messages


def valid_paths_hint(model: nn.Module, wrong: str) -> str:
    """The valid module paths to show after a wrong one: all of them for a small model; for a large
    one (a torchvision ResNet-50 has 150+) the top-level modules, the children of the deepest
    existing ancestor of ``wrong`` (``features.33`` -> ``features.0 ... features.12``) and the
    closest spellings."""
    paths = module_paths(model)
    if len(paths) <= FULL_LIST_MAX:
        return "valid paths: " + (", ".join(paths) or "(none)")
    valid = set(paths)
    parts = str(wrong).split(".")
    ancestor = next((".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in valid), "")
    top = [p for p in paths if "." not in p]
    lines = [f"top-level modules: {', '.join(top)}"]
    if ancestor:
        children = [n for n, _ in model.get_submodule(ancestor).named_children()]
        lines.append(f"inside {ancestor!r}: {', '.join(f'{ancestor}.{c}' for c in children) or '(no submodules)'}")
    close = difflib.get_close_matches(str(wrong), paths, n=5, cutoff=0.6)
    if close:
        lines.append(f"closest: {', '.join(close)}")
    lines.append(f"({len(paths)} paths in all: [n for n, _ in model.named_modules()])")
    return "; ".join(lines)


class FeatureTap:
    """Context manager recording the outputs of the modules at ``paths`` into ``self.features``.

    A module returning a tuple (an RNN's ``(output, state)``) contributes its first element; a
    ``PackedSequence`` is unpacked to a zero-padded ``[N, T, D]`` tensor whose T is the model
    input's time length (dim 1), so every batch of one dataset gives features of one shape.

    >>> with FeatureTap(model, ["layer2", "layer3.0.relu"]) as tap:
    ...     logits = model(x)
    >>> tap.features["layer2"].shape
    """

    def __init__(self, model: nn.Module, paths: Sequence[str]):
        modules = dict(model.named_modules())
        unknown = [p for p in paths if not p or p not in modules]
        if unknown:
            raise KdflowError(f"unknown module path {unknown[0]!r}; {valid_paths_hint(model, unknown[0])}")
        self.model = model
        self.paths = list(dict.fromkeys(paths))
        self._modules = {p: modules[p] for p in self.paths}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._input_steps: int | None = None
        self.features: dict[str, Tensor] = {}

    def _hook(self, path: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)) and not isinstance(output, PackedSequence):
                output = output[0]  # an RNN's (output, state): keep the output
            if isinstance(output, PackedSequence):  # padded back to the model input's time length
                output, _ = pad_packed_sequence(output, batch_first=True, total_length=self._time_steps(output))
            self.features[path] = output

        return record

    def _record_input(self, module: nn.Module, args: Any) -> None:
        x = args[0] if args else None
        self._input_steps = int(x.shape[1]) if isinstance(x, Tensor) and x.dim() >= 2 else None

    def _time_steps(self, packed: PackedSequence) -> int | None:
        """The model input's time length (so every batch gives [N, T, D] with the same T), unless the
        packed sequence is longer than it."""
        longest = int(packed.batch_sizes.shape[0])
        return self._input_steps if self._input_steps is not None and self._input_steps >= longest else None

    def __enter__(self) -> "FeatureTap":
        self.features = {}
        self._input_steps = None
        self._handles = [self.model.register_forward_pre_hook(self._record_input)]
        self._handles += [m.register_forward_hook(self._hook(p)) for p, m in self._modules.items()]
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
