"""The model registry and ``create_model``, the one way configs turn an arch name into a network."""
from __future__ import annotations

import inspect
import json
from typing import Any, Callable

from torch import nn

from kdcore.errors import KdflowError
from kdcore.registry import Registry

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")

_BUILTIN_ARGS = ("in_channels", "num_classes")


def accepted_params(arch: str) -> list[str]:
    """Names of the keyword parameters the ``arch`` factory takes besides in_channels/num_classes."""
    factory = MODELS.get(arch)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        name
        for name, p in inspect.signature(factory).parameters.items()
        if p.kind in kinds and name not in _BUILTIN_ARGS
    ]


def _check_kwargs(arch: str, kwargs: dict[str, Any]) -> None:
    factory = MODELS.get(arch)
    accepted = accepted_params(arch)
    listed = ", ".join(accepted) or "(none)"
    for name in kwargs:
        if name not in accepted:
            raise KdflowError(
                f"model {arch!r} does not accept parameter {name!r}; accepted parameters: {listed}"
            )
    for name, p in inspect.signature(factory).parameters.items():
        if name in accepted and p.default is inspect.Parameter.empty and name not in kwargs:
            raise KdflowError(f"model {arch!r} needs parameter {name!r}; accepted parameters: {listed}")


def _positive_int(arch: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KdflowError(f"model {arch!r}: {name} must be a positive integer, got {value!r}")
    return value


def create_model(arch: str, *, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build the registered model ``arch``; the result carries ``kdflow_spec`` to rebuild it later."""
    factory = MODELS.get(arch)
    _positive_int(arch, "in_channels", in_channels)
    _positive_int(arch, "num_classes", num_classes)
    _check_kwargs(arch, kwargs)
    try:
        saved_kwargs = json.loads(json.dumps(kwargs))
    except (TypeError, ValueError) as err:
        raise KdflowError(f"model {arch!r}: parameters must be JSON-serialisable ({err})") from None
    model = factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
    model.kdflow_spec = {
        "arch": arch,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "kwargs": saved_kwargs,
    }
    return model
