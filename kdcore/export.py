"""Exporting a trained model for serving (TorchScript) and checking it gives the model's outputs."""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from kdcore.errors import KdflowError
from kdcore.evaluate import predict


class ExportError(KdflowError):
    """A model could not be exported, or its export disagrees with it."""


@dataclass
class ExportResult:
    path: Path
    method: str  # "script" or "trace"
    max_abs_diff: float
    samples: int


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Recent torch marks TorchScript deprecated (a FutureWarning on every call); it still works,
    and kdflow keeps it as its export format for now."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*deprecated")
        yield


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with _quiet_jit():
        return torch.jit.load(str(path), map_location="cpu")


def to_torchscript(model: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """``torch.jit.script`` the model (keeps its control flow); ``torch.jit.trace`` it when scripting fails."""
    with _quiet_jit():
        return _to_torchscript(model, example)


def _to_torchscript(model: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    model = copy.deepcopy(model).cpu().eval()
    try:
        return torch.jit.script(model), "script"
    except Exception as script_error:  # noqa: BLE001 - many eager models do not script; tracing is the fallback
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the parity check is the guard
                return torch.jit.trace(model, example.cpu(), check_trace=False), "trace"
        except Exception as trace_error:  # noqa: BLE001
            raise ExportError(
                f"the model could neither be scripted ({script_error.__class__.__name__}) nor traced "
                f"({trace_error}); set export.format=none to skip the export"
            ) from None


def export_torchscript(
    model: nn.Module, inputs: torch.Tensor, path: Path, atol: float, batch_size: int = 256
) -> ExportResult:
    """Write ``model`` as TorchScript to ``path`` and compare the reloaded file's outputs with the
    model's on ``inputs``; fails when the largest absolute difference exceeds ``atol``."""
    if inputs.shape[0] == 0:
        raise ExportError("export needs at least one input sample for the parity check")
    scripted, method = to_torchscript(model, inputs[:2])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with _quiet_jit():
        torch.jit.save(scripted, str(tmp))
    tmp.replace(path)
    reloaded = load_torchscript(path)
    reference = predict(copy.deepcopy(model).cpu(), inputs.cpu(), batch_size=batch_size)
    exported = predict(reloaded, inputs.cpu(), batch_size=batch_size)
    diff = float((reference - exported).abs().max())
    if not diff <= atol:
        raise ExportError(
            f"the TorchScript export ({method}) differs from the PyTorch model by up to {diff:.3g} "
            f"on {inputs.shape[0]} samples (export.atol = {atol:g})"
        )
    return ExportResult(path, method, diff, int(inputs.shape[0]))
