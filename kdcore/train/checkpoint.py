"""Weights on disk: safetensors + a JSON sidecar; training state via torch.save/weights_only load.

Every write goes to a temporary name first and is renamed into place, so a kill during a write
never leaves a file that loads wrongly.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from kdcore.errors import CheckpointError
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


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors into ``model``, failing clearly when the architecture does not match."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or extra or shapes:
        spec = getattr(model, "kdflow_spec", {}) or {}
        detail = "; ".join(
            ([f"missing {missing[:3]}"] if missing else []) + ([f"unexpected {extra[:3]}"] if extra else [])
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

        def build(s: dict) -> nn.Module:
            return create_model(s["arch"], in_channels=s["in_channels"], num_classes=s["num_classes"], **s["kwargs"])

    model = build(spec)
    load_into(model, read_tensors(path), str(path))
    return model


# ---------------------------------------------------------------------------------------------
# Per-epoch training checkpoints: a directory per epoch, written under a temporary name and
# renamed into place when complete.


def save_training_checkpoint(ckpt_dir: Path, epoch: int, modules: dict[str, nn.Module], state: dict[str, Any],
                             meta: dict[str, Any], keep: int = 1) -> Path:
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
