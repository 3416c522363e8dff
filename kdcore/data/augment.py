"""Seeded, replayable augmentation views.

A view of sample ``i`` is a pure function of the image and one integer seed, so the teacher's
cached output for (sample, view) can be replayed exactly for the student: the distillation loader
recomputes the very same augmented image from the stored seed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from kdcore.errors import ConfigError

_POLICIES: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {}


def policy(name: str):
    def add(fn):
        _POLICIES[name] = fn
        return fn

    return add


def policies() -> list[str]:
    return sorted(_POLICIES)


def view_seeds(n: int, num_views: int, seed: int) -> np.ndarray:
    """One 62-bit seed per (sample, view): the same (n, num_views, seed) always gives the same array."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.integers(0, 2**62, size=(n, num_views), dtype=np.int64)


def epoch_views(n: int, num_views: int, seed: int, epoch: int) -> torch.Tensor:
    """Which stored view each sample shows in ``epoch`` (deterministic, so resume replays it)."""
    if num_views == 1:
        return torch.zeros(n, dtype=torch.long)
    rng = np.random.Generator(np.random.PCG64([seed, epoch, 0x5EED]))
    return torch.from_numpy(rng.integers(0, num_views, size=n, dtype=np.int64))


def _shift(x: torch.Tensor, seeds: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random translation by up to ``pad`` pixels (zero padding + crop), per sample from its seed."""
    n, _, h, w = x.shape
    span = 2 * pad + 1
    s = seeds.to(torch.long).cpu()
    dy = (s % span).to(x.device)
    dx = ((s // span) % span).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # [N, H]
    cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # [N, W]
    b = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous(), s // (span * span)


@policy("none")
def _none(x: torch.Tensor, seeds: torch.Tensor, pad: int) -> torch.Tensor:
    return x


@policy("shift")
def _shift_only(x: torch.Tensor, seeds: torch.Tensor, pad: int) -> torch.Tensor:
    return _shift(x, seeds, pad)[0]


@policy("crop_flip")
def _crop_flip(x: torch.Tensor, seeds: torch.Tensor, pad: int) -> torch.Tensor:
    out, rest = _shift(x, seeds, pad)
    flip = (rest % 2 == 1).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def apply_views(x: torch.Tensor, seeds: torch.Tensor, name: str, pad: int = 2) -> torch.Tensor:
    """The augmented views of images ``x`` [N, C, H, W] given one seed per image."""
    try:
        fn = _POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown augmentation policy {name!r}; known: {', '.join(policies())}") from None
    if name != "none" and x.dim() != 4:
        raise ConfigError(f"augmentation policy {name!r} needs images [N, C, H, W], got shape {tuple(x.shape)}")
    return fn(x, seeds, pad)
