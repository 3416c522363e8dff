"""Weights on disk: safetensors + a JSON sidecar; training state via torch.save/weights_only load.

Every write goes to a temporary name first and is renamed into place, so a kill during a write
never leaves a file that loads wrongly.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from kdcore.errors import CheckpointError, describe
from kdcore.fingerprint import file_sha256


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_model(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> str:
    """Write ``path`` (.safetensors) and ``path.json`` (architecture spec + meta); return sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(state_tensors(model), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    digest = file_sha256(path)
    sidecar = {"spec": getattr(model, "kdflow_spec", None), "sha256": digest, **(meta or {})}
    write_json(sidecar_path(path), sidecar)
    return digest


def sidecar_path(path: str | Path) -> Path:
    return Path(str(path) + ".json")


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupted or not a safetensors file ({exc})") from None


# ---------------------------------------------------------------------------------------------
# Weights saved by any training code: a plain state_dict, as safetensors or a torch.save file.

STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")  # {"state_dict": {...}, "epoch": 3}
KEY_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / DataParallel, torch.compile
SAVE_HINT = (
    "save the weights alone with torch.save(model.state_dict(), path) (or safetensors' save_file) and give that file"
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file written by any training code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which never runs pickled code: a file holding a whole
    pickled model (``torch.save(model)``) is refused with a message saying how to save a state_dict.
    A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper (training scripts add epoch, optimizer
    state...) is unwrapped, and a ``module.`` prefix on every key (DDP, DataParallel) or
    ``_orig_mod.`` (torch.compile) is removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the save that wrote it did not finish")
    if path.suffix == ".safetensors":
        return _strip_prefixes(read_tensors(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f" (it pickles {found.group(1)})" if found else ""
            raise CheckpointError(
                f"checkpoint {path} is a pickled Python object, not a state_dict{what}; kdflow "
                f"never unpickles code: {SAVE_HINT}"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupted or not a PyTorch/safetensors weights file") from None
    except Exception as exc:  # noqa: BLE001 - random bytes make the unpickler fail in many ways (IndexError, ...)
        raise CheckpointError(
            f"checkpoint {path} is corrupted or not a PyTorch/safetensors weights file ({describe(exc, 200)})"
        ) from None
    return _strip_prefixes(_unwrap(obj, path))


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_WRAPPERS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointError(
            f"checkpoint {path} is not a state_dict: a mapping with keys {keys} that holds no "
            f"mapping of tensor names to tensors (under {', '.join(STATE_DICT_WRAPPERS)}); "
            f"{SAVE_HINT}"
        )
    raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict; {SAVE_HINT}")


def _strip_prefixes(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in KEY_PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def load_matching(model: nn.Module, tensors: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """Load the tensors whose name and shape match the model's (pretrained backbone, new head);
    returns ``{"loaded": [...], "new": [...], "ignored": [...]}`` (new: the model's tensors the
    weights did not provide; ignored: the weights' tensors the model has no place for)."""
    own = model.state_dict()
    fits = {k: v for k, v in tensors.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fits, strict=False)
    return {
        "loaded": sorted(fits),
        "new": sorted(k for k in own if k not in fits),
        "ignored": sorted(k for k in tensors if k not in fits),
    }


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors into ``model``, failing clearly when the architecture does not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in tensors and tensors[k].shape != own[k].shape
    ]
    if missing or extra or shapes:
        spec = getattr(model, "kdflow_spec", {}) or {}
        detail = "; ".join(
            ([f"missing {missing[:3]}"] if missing else [])
            + ([f"unexpected {extra[:3]}"] if extra else [])
            + ([f"shape mismatch {shapes[:2]}"] if shapes else [])
        )
        raise CheckpointError(
            f"checkpoint {source} does not fit architecture {spec.get('arch', type(model).__name__)!r}: {detail}"
        )
    model.load_state_dict(tensors)


def load_model(path: str | Path, build: Any = None) -> nn.Module:
    """Rebuild a model from ``path`` + its sidecar (``build(spec)`` creates the empty model)."""
    path = Path(path)
    meta = read_json(sidecar_path(path))
    spec = meta.get("spec")
    if not spec:
        raise CheckpointError(f"{sidecar_path(path)} has no architecture spec")
    if build is None:
        from kdcore.models import create_model

        def build(s: dict) -> nn.Module:  # the checkpoint's tensors replace any pretrained weights: skip loading them
            return create_model(
                s["arch"], in_channels=s["in_channels"], num_classes=s["num_classes"], load_weights=False, **s["kwargs"]
            )

    model = build(spec)
    load_into(model, read_tensors(path), str(path))
    return model


def load_teacher(
    path: str | Path, arch: str, kwargs: Mapping[str, Any], in_channels: int, num_classes: int
) -> nn.Module:
    """The configured teacher with the weights of ``teacher.checkpoint``, on the CPU.

    A kdflow checkpoint (safetensors + JSON sidecar) is rebuilt from its sidecar and must be of the
    configured architecture, input channels and classes. Any other file is a plain state_dict
    (:func:`read_state_dict`) loaded, every tensor of it, into ``arch`` built with ``kwargs``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"teacher.checkpoint: file {str(path)!r} does not exist")
    expected = {"arch": arch, "in_channels": in_channels, "num_classes": num_classes}
    if sidecar_path(path).is_file():
        model = load_model(path)
        spec = getattr(model, "kdflow_spec", {}) or {}
        wrong = [
            f"{k}: checkpoint {spec.get(k)!r} vs config/data {v!r}" for k, v in expected.items() if spec.get(k) != v
        ]
        if wrong:
            raise CheckpointError(
                f"teacher.checkpoint {path} does not match the configured teacher ({'; '.join(wrong)})"
            )
        return model
    from kdcore.models import create_model

    model = create_model(arch, in_channels=in_channels, num_classes=num_classes, load_weights=False, **kwargs)
    tensors = read_state_dict(path)
    try:
        load_into(model, tensors, str(path))
    except CheckpointError as exc:
        raise CheckpointError(
            f"{exc} (teacher.arch {arch!r} with {in_channels} input channel(s) and "
            f"{num_classes} classes; the state_dict must be of that same network)"
        ) from None
    return model


# ---------------------------------------------------------------------------------------------
# Per-epoch training checkpoints: a directory per epoch, written under a temporary name and
# renamed into place when complete.


def save_training_checkpoint(
    ckpt_dir: Path,
    epoch: int,
    modules: dict[str, nn.Module],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 1,
) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_dir, prefix=".tmp-"))
    try:
        for name, module in modules.items():
            save_file(state_tensors(module), str(tmp / f"{name}.safetensors"))
        torch.save(state, tmp / "state.pt")
        write_json(tmp / "meta.json", {**meta, "epoch": epoch, "modules": sorted(modules)})
        final = ckpt_dir / f"epoch-{epoch:04d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(ckpt_dir.glob("epoch-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_dir.glob(".tmp-*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_training_checkpoint(ckpt_dir: Path) -> Path | None:
    if not ckpt_dir.is_dir():
        return None
    done = sorted(p for p in ckpt_dir.glob("epoch-*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def load_training_checkpoint(path: Path, modules: dict[str, nn.Module]) -> tuple[dict[str, Any], dict[str, Any]]:
    meta = read_json(path / "meta.json")
    for name, module in modules.items():
        load_into(module, read_tensors(path / f"{name}.safetensors"), str(path / f"{name}.safetensors"))
    try:
        state = torch.load(path / "state.pt", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state is a corrupted checkpoint
        raise CheckpointError(f"training state {path / 'state.pt'} cannot be read ({exc})") from None
    return meta, state
