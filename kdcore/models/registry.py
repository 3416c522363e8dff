"""The model registry and ``create_model``, the one way configs turn an arch name into a network.

An arch is a registered name (``cnn_small``, ``resnet8x4``, ...) or ``SOURCE:NAME`` for a model
from elsewhere (:mod:`kdcore.models.ecosystem`): ``torchvision:resnet18``, ``timm:resnet10t``,
``python:my_pkg.models:make_net``.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from torch import nn

from kdcore.errors import KdflowError, describe
from kdcore.registry import Registry
from kdcore.signature import accepted_params as _accepted
from kdcore.signature import check_kwargs

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")
# "torchvision" -> resolve(name) -> a factory(in_channels, num_classes, **kwargs); see kdcore.models.ecosystem
MODEL_SOURCES: Registry[Callable[[str], ModelFactory]] = Registry("model source")

_BUILTIN_ARGS = ("in_channels", "num_classes", "load_weights")


def resolve_factory(arch: str) -> ModelFactory:
    """The factory behind ``arch``: a registered model, or ``SOURCE:NAME`` resolved by its source."""
    if not isinstance(arch, str) or not arch:
        raise KdflowError(f"a model arch must be a non-empty name, got {arch!r}")
    if ":" in arch:
        source, _, name = arch.partition(":")
        if source not in MODEL_SOURCES:
            raise KdflowError(
                f"unknown model source {source!r} in {arch!r}; sources: "
                f"{', '.join(f'{s}:NAME' for s in MODEL_SOURCES.names())}"
            )
        return MODEL_SOURCES.get(source)(name)
    return MODELS.get(arch)


def accepted_params(arch: str) -> list[str]:
    """Names of the keyword parameters the ``arch`` factory takes besides in_channels/num_classes."""
    return _accepted(resolve_factory(arch), skip=_BUILTIN_ARGS)


def _positive_int(arch: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KdflowError(f"model {arch!r}: {name} must be a positive integer, got {value!r}")
    return value


def create_model(
    arch: str, *, in_channels: int, num_classes: int, load_weights: bool = True, **kwargs: Any
) -> nn.Module:
    """Build the model ``arch``; the result carries ``kdflow_spec`` to rebuild it later.

    ``load_weights=False`` tells a factory that declares a ``load_weights`` parameter (the
    torchvision and timm sources do) not to load the pretrained weights its kwargs name: the
    caller loads a checkpoint over them (rebuilding a saved model). A factory may set
    ``kdflow_weights`` on the model (which tensors came from pretrained weights, which are new)."""
    factory = resolve_factory(arch)
    _positive_int(arch, "in_channels", in_channels)
    _positive_int(arch, "num_classes", num_classes)
    if "load_weights" in kwargs:
        raise KdflowError(f"model {arch!r}: 'load_weights' is reserved by kdflow; name the weights with 'weights'")
    check_kwargs(f"model {arch!r}", factory, kwargs, skip=_BUILTIN_ARGS)
    try:
        saved_kwargs = json.loads(json.dumps(kwargs))
    except (TypeError, ValueError) as err:
        raise KdflowError(f"model {arch!r}: parameters must be JSON-serialisable ({err})") from None
    extra = {"load_weights": load_weights} if "load_weights" in _accepted(factory) else {}
    try:
        model = factory(in_channels=in_channels, num_classes=num_classes, **extra, **kwargs)
    except KdflowError:
        raise
    except Exception as exc:  # noqa: BLE001 - a factory's own failure (user code, a library's builder)
        raise KdflowError(f"model {arch!r}: building it failed: {describe(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise KdflowError(f"model {arch!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    # torch annotates Module.__setattr__'s value as Tensor | Module; any value is accepted (a plain attribute)
    model.kdflow_spec = {  # type: ignore[assignment]
        "arch": arch,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "kwargs": saved_kwargs,
    }
    return model
