"""Device and precision choices: ``auto`` picks CUDA, then MPS, then CPU.

A flow run given GPUs by its work pool (``KDFLOW_GPUS``, set from the pool's ``gpus`` job variable,
see flows/pool_templates.py) must see them: with ``auto`` or ``cuda`` and fewer visible CUDA devices
than that, :func:`resolve_device` fails with a clear message instead of training on the CPU.
``trainer.device: cuda`` asks the same of any run. ``KDFLOW_GPUS=0`` (or unset) lifts the check.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from kdcore.errors import ConfigError
from kdcore.tensors import NO_CONTEXT

GPUS_ENV = "KDFLOW_GPUS"


def required_gpus() -> int:
    """The GPUs this process was given by its work pool (``KDFLOW_GPUS``); 0 when unset."""
    raw = os.environ.get(GPUS_ENV, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{GPUS_ENV}={raw!r} is not a number of GPUs") from None
    if value < 0:
        raise ConfigError(f"{GPUS_ENV}={raw!r} is not a number of GPUs")
    return value


def check_required_gpus(name: str) -> None:
    """A clear error when this run was given GPUs (``KDFLOW_GPUS``) that CUDA does not see."""
    need = required_gpus()
    if need == 0 or name not in ("auto", "cuda"):
        return
    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen < need:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        raise ConfigError(
            f"this run needs {need} GPU(s) ({GPUS_ENV}={need}, the work pool's `gpus` job variable) but CUDA sees "
            f"{seen} (CUDA_VISIBLE_DEVICES={shown}); it will not train on the CPU instead. Check the worker's "
            f"NVIDIA driver (and for Docker the NVIDIA container toolkit), or run with {GPUS_ENV}=0 / "
            "job variable gpus=0 to allow the CPU"
        )


def forward_batch_size(device: torch.device, input_shape: tuple[int, ...] = (), accelerator: int = 512) -> int:
    """Samples per no-grad forward (the cache build's teacher, validation): 128 on the CPU, where
    a batch's activations then stay in the processor's caches (on 28-px images a resnet14 ran 1.5x
    and a 9k-parameter CNN 1.45x as fast at 128 as at 512; bench/forward_batch.py), ``accelerator``
    elsewhere. Images larger than 32 x 32 get fewer (at least 32), so that a batch holds about as
    many pixels as at 32 px: a 512-image batch of 64-px images alone took several hundred MB.
    Inputs that are not images (sequences, tokens) get ``accelerator`` on every device: a GRU over
    40 tokens ran faster at 512 than at 128 on the CPU."""
    if len(input_shape) < 3:
        return accelerator
    largest = 128 if device.type == "cpu" else accelerator
    pixels = int(input_shape[-1]) * int(input_shape[-2])
    if pixels <= 32 * 32:
        return largest
    return max(32, min(largest, largest * 32 * 32 // pixels))


def resolve_device(name: str = "auto") -> torch.device:
    check_required_gpus(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device = {name!r} but CUDA is not available on this machine")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("trainer.device = 'mps' but MPS is not available on this machine")
    return torch.device(name)


def autocast_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype for this device, or None for full precision. The CPU runs in fp32 unless
    bf16 is asked for (``amp: bf16``: on a CPU with AMX a small CNN's training step ran 1.2x and a
    resnet's forward 2.1x faster, bench/cpu_bf16.py); fp16 is for GPUs only."""
    if amp == "off":
        return None
    if device.type == "cpu":
        return torch.bfloat16 if amp == "bf16" else None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return NO_CONTEXT
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
