"""Models from elsewhere: ``torchvision:NAME``, ``timm:NAME`` and ``python:MODULE:FACTORY``.

Each is built for the data (``num_classes``, ``in_channels``) and its ``kwargs``:

``torchvision:NAME``
    Any classification builder of ``torchvision.models`` (``resnet18``, ``resnet50``,
    ``mobilenet_v3_small``, ``efficientnet_b0``, ``convnext_tiny``, ``vit_b_16``, ...; the list is
    ``torchvision.models.list_models(module=torchvision.models)``). Other kwargs go to the builder.

    * ``weights``: ``null`` (random initialisation), a torchvision weights name (``IMAGENET1K_V1``,
      ``DEFAULT`` or ``ResNet18_Weights.IMAGENET1K_V1``) or the path of a state_dict file (see
      :func:`kdcore.train.checkpoint.read_state_dict`). A weights name is read from the local torch
      hub cache (``$TORCH_HOME/hub/checkpoints``) and only downloaded with ``download: true``.
      Tensors load by name where their shapes match: with another number of classes the backbone
      loads and the classifier head is new. What loaded and what is new is logged and kept on the
      model as ``kdflow_weights`` (the teacher stage records it).
    * Inputs with other than 3 channels: the **stem is adapted**, not the channel repeated: the
      first 3-channel convolution is replaced by one with ``in_channels`` inputs. When pretrained
      weights were loaded into it, its kernel becomes the sum over the RGB kernels (1 channel; a
      grey image then gives the response the RGB kernels gave to that grey repeated three times),
      or, for C channels, the RGB mean repeated C times and scaled by 3/C. Without weights it is
      freshly initialised.
    * ViT (``vit_b_16``, ...) checks its input size: it defaults to 224 pixels, so give
      ``image_size`` equal to the data's side (``kwargs: {image_size: 32}``; the side must be a
      multiple of the patch size). With ImageNet weights and another ``image_size`` the position
      embedding does not fit and is reported new.

``timm:NAME``
    ``timm.create_model(NAME, num_classes=, in_chans=, pretrained=, **kwargs)`` (timm adapts the
    stem itself). Needs the optional extra: ``pip install 'kdflow[timm]'``. ``pretrained: true``
    uses timm's own weights download and cache; ``weights: PATH`` loads a state_dict file as above.

``python:MODULE:FACTORY``
    The user's callable ``FACTORY`` of module ``MODULE`` (importable: installed, on
    ``PYTHONPATH`` or in the working directory), called as
    ``FACTORY(in_channels=..., num_classes=..., **kwargs)``; it must return a ``torch.nn.Module``.
    A factory that declares a ``load_weights`` parameter is told ``False`` when kdflow rebuilds the
    model only to load a checkpoint over it.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch
from torch import nn

from kdcore.errors import KdflowError
from kdcore.models.registry import MODEL_SOURCES, ModelFactory
from kdcore.signature import accepted_params, takes_any_kwargs

log = logging.getLogger("kdflow.models")

WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def _is_path(weights: str) -> bool:
    return os.sep in weights or "/" in weights or Path(weights).suffix in WEIGHT_FILE_SUFFIXES or Path(weights).exists()


def _load_weights(model: nn.Module, arch: str, tensors: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Load the matching tensors; log and return what loaded and what is new."""
    from kdcore.train.checkpoint import load_matching

    report = load_matching(model, tensors)
    if not report["loaded"]:
        raise KdflowError(
            f"model {arch!r}: no tensor of the weights {source} fits the model (names or shapes "
            f"differ everywhere; the model has e.g. {', '.join(list(model.state_dict())[:3])}, the "
            f"weights {', '.join(list(tensors)[:3])})"
        )
    log.info(
        "model %s: %d tensors loaded from %s; new: %s%s",
        arch,
        len(report["loaded"]),
        source,
        ", ".join(report["new"]) or "none",
        f"; not used: {', '.join(report['ignored'])}" if report["ignored"] else "",
    )
    return {"weights": source, **report}


def weights_summary(info: dict[str, Any] | None) -> dict[str, Any]:
    """The short form of a model's ``kdflow_weights`` for a stage's record (counts, new tensor names)."""
    if not info:
        return {}
    return {
        "weights": info["weights"],
        "loaded_tensors": len(info["loaded"]),
        "new_tensors": info["new"],
        "unused_tensors": info["ignored"],
    }


# ---------------------------------------------------------------------------------------------
# Input channels: adapting a 3-channel stem


def adapt_stem(model: nn.Module, arch: str, in_channels: int, pretrained: set[str]) -> str:
    """Replace the first 3-input-channel Conv2d by one with ``in_channels`` inputs; returns its path.

    ``pretrained``: the names of the tensors that came from pretrained weights; when the stem's
    kernel is among them the new kernel is derived from it (sum over RGB for one channel)."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1:
            conv: Any = module  # its kernel_size/stride/padding/dilation are tuples of 2 for a Conv2d
            new = nn.Conv2d(
                in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                1,
                conv.bias is not None,
                conv.padding_mode,
            )
            if f"{path}.weight" in pretrained:
                with torch.no_grad():
                    w = module.weight
                    if in_channels == 1:
                        new.weight.copy_(w.sum(1, keepdim=True))
                    else:
                        new.weight.copy_(w.mean(1, keepdim=True).repeat(1, in_channels, 1, 1) * (3 / in_channels))
                    if module.bias is not None and new.bias is not None:
                        new.bias.copy_(module.bias)
            parent, _, name = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, name, new)
            return path
    raise KdflowError(f"model {arch!r}: found no 3-channel convolution to adapt to {in_channels} input channel(s)")


# ---------------------------------------------------------------------------------------------
# torchvision


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return tvm.list_models(module=tvm)


def _hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_weights(name: str, weights: str, download: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The state_dict of torchvision weights ``weights`` of model ``name`` (a weights name or a
    file), and a description of where it came from."""
    from kdcore.train.checkpoint import read_state_dict

    if _is_path(weights):
        return read_state_dict(weights), str(weights)
    import torchvision.models as tvm

    enum = tvm.get_model_weights(name)
    member = weights.split(".", 1)[1] if weights.startswith(f"{enum.__name__}.") else weights
    try:
        chosen = enum[member]
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise KdflowError(
            f"model 'torchvision:{name}': unknown weights {weights!r}; {enum.__name__} has {names} "
            f"(or give the path of a state_dict file)"
        ) from None
    label = f"{enum.__name__}.{chosen.name}"
    cached = _hub_file(chosen.url)
    if not cached.is_file() and not download:
        raise KdflowError(
            f"model 'torchvision:{name}': weights {label} are not in the local torch hub cache "
            f"(looked for {cached}); set kwargs.download: true to fetch them from {chosen.url}, or "
            f"give the path of a state_dict file as kwargs.weights"
        )
    try:
        state = torch.hub.load_state_dict_from_url(chosen.url, progress=False, map_location="cpu", check_hash=True)
    except Exception as exc:  # noqa: BLE001 - network or a damaged cache file
        raise KdflowError(
            f"model 'torchvision:{name}': weights {label} could not be read "
            f"({'downloaded' if not cached.is_file() else cached}): {type(exc).__name__}: {exc}"
        ) from None
    return state, f"{label} ({cached})"


def _torchvision(name: str) -> ModelFactory:
    names = _torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=6, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KdflowError(
            f"unknown model 'torchvision:{name}': not a classification model of torchvision "
            f"{_tv_version()}{hint} (all {len(names)}: torchvision.models.list_models())"
        )
    import torchvision.models as tvm

    builder = tvm.get_model_builder(name)
    arch = f"torchvision:{name}"

    def factory(
        in_channels: int,
        num_classes: int,
        weights: str | None = None,
        download: bool = False,
        load_weights: bool = True,
        **kwargs: Any,
    ) -> nn.Module:
        if weights is not None and not isinstance(weights, str):
            raise KdflowError(f"model {arch!r}: weights must be null, a weights name or a file path, got {weights!r}")
        if not isinstance(download, bool):
            raise KdflowError(f"model {arch!r}: download must be true or false, got {download!r}")
        try:
            model = builder(weights=None, num_classes=num_classes, **kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise KdflowError(f"model {arch!r}: {type(exc).__name__}: {exc}") from None
        info = None
        if weights and load_weights:
            state, source = torchvision_weights(name, weights, download)
            info = _load_weights(model, arch, state, source)
        if in_channels != 3:
            stem = adapt_stem(model, arch, in_channels, set(info["loaded"]) if info else set())
            if info:
                info["stem"] = stem
        if info:
            model.kdflow_weights = info
        return model

    factory.__name__ = name
    return factory


def _tv_version() -> str:
    import torchvision

    return torchvision.__version__


# ---------------------------------------------------------------------------------------------
# timm


def _timm(name: str) -> ModelFactory:
    try:
        import timm
    except ImportError:
        raise KdflowError(
            f"model 'timm:{name}' needs the timm package, which is not installed: "
            f"pip install 'kdflow[timm]' (or pip install timm)"
        ) from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8] or difflib.get_close_matches(name, timm.list_models(), n=6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KdflowError(
            f"unknown model 'timm:{name}': not a model of timm {timm.__version__}{hint} (all: timm.list_models())"
        )
    arch = f"timm:{name}"

    def factory(
        in_channels: int,
        num_classes: int,
        weights: str | None = None,
        pretrained: bool = False,
        load_weights: bool = True,
        **kwargs: Any,
    ) -> nn.Module:
        if weights is not None and not isinstance(weights, str):
            raise KdflowError(f"model {arch!r}: weights must be null or a file path, got {weights!r}")
        try:
            model = timm.create_model(
                name,
                pretrained=bool(pretrained and load_weights),
                num_classes=num_classes,
                in_chans=in_channels,
                **kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - timm raises many kinds (bad kwargs, download failures)
            raise KdflowError(f"model {arch!r}: {type(exc).__name__}: {exc}") from None
        if weights and load_weights:
            from kdcore.train.checkpoint import read_state_dict

            # a plain attribute; torch annotates Module.__setattr__'s value as Tensor | Module only
            model.kdflow_weights = _load_weights(  # type: ignore[assignment]
                model, arch, read_state_dict(weights), weights
            )
        return model

    factory.__name__ = name
    return factory


# ---------------------------------------------------------------------------------------------
# python:MODULE:FACTORY


def _python(target: str) -> ModelFactory:
    from kdcore.plugins import import_module

    arch = f"python:{target}"
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise KdflowError(f"model {arch!r}: expected python:MODULE:FACTORY, e.g. python:my_pkg.models:make_net")
    module = import_module(module_name, what=f"model {arch!r}: module")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            own = sorted(
                n
                for n, v in vars(module).items()
                if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == module.__name__
            )  # defined there, not imported
            raise KdflowError(
                f"model {arch!r}: module {module_name!r} has no attribute {attr!r}; the functions and "
                f"classes it defines: {', '.join(own[:20]) or '(none)'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise KdflowError(f"model {arch!r}: {module_name}.{attr} is a {type(obj).__name__}, not a callable factory")
    takes = accepted_params(obj)
    lacking = [p for p in ("in_channels", "num_classes") if p not in takes]
    if lacking and not takes_any_kwargs(obj):
        raise KdflowError(
            f"model {arch!r}: the factory must accept in_channels and num_classes (kdflow passes the "
            f"data's); it lacks {', '.join(lacking)}"
        )
    return obj


def _register(prefix: str, resolve: Callable[[str], ModelFactory]) -> None:
    def checked(name: str) -> ModelFactory:
        if not name:
            raise KdflowError(f"model '{prefix}:' names no model (e.g. {EXAMPLES[prefix]})")
        return resolve(name)

    MODEL_SOURCES.register(prefix)(checked)


EXAMPLES = {"torchvision": "torchvision:resnet18", "timm": "timm:resnet10t", "python": "python:my_pkg.models:make_net"}
_register("torchvision", _torchvision)
_register("timm", _timm)
_register("python", _python)
