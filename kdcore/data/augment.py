"""Seeded, replayable augmentation views.

A view of sample ``i`` is a pure function of the image and one integer seed, so the teacher's
cached output for (sample, view) can be replayed exactly for the student: the distillation loader
recomputes the very same augmented image from the stored seed.

Mixed views (``mix: mixup|cutmix``) also depend on a partner sample: the partner, the mixing
coefficient and (cutmix) the pasted box of every (sample, view) are drawn once, stored with the
cache entry (:func:`mix_params`), and the mixed image is rebuilt from them (:func:`replay_views`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch
from torch.nn import functional as F

from kdcore.errors import ConfigError


class ViewOpts(NamedTuple):
    """The parameters a policy reads (each policy uses its own)."""

    pad: int = 2
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True


_POLICIES: dict[str, Callable[[torch.Tensor, torch.Tensor, ViewOpts], torch.Tensor]] = {}
MIX_PARTNER, MIX_LAM, MIX_BOX = "mix_partner", "mix_lam", "mix_box"


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
    """Which stored view each sample shows in ``epoch`` (deterministic, so resume replays it).

    Every sample walks through its own random permutation of the ``num_views`` views, a fresh one
    every ``num_views`` epochs: within a cycle no sample shows a view twice."""
    if num_views == 1:
        return torch.zeros(n, dtype=torch.long)
    cycle, pos = divmod(epoch, num_views)
    rng = np.random.Generator(np.random.PCG64([seed, cycle, 0x5EED]))
    order = np.argsort(rng.random((n, num_views)), axis=1, kind="stable")  # one permutation per sample
    return torch.from_numpy(np.ascontiguousarray(order[:, pos]).astype(np.int64))


def seed_uniforms(seeds: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` uniform numbers in [0, 1) per seed, float64 [N, k]: a pure function of each seed
    (splitmix64 of seed + j * golden ratio), vectorised, independent of batch composition."""
    s = seeds.cpu().numpy().astype(np.uint64)[:, None]
    j = np.arange(1, k + 1, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        z = s + j * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * 2.0**-53)


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
def _none(x: torch.Tensor, seeds: torch.Tensor, opts: ViewOpts) -> torch.Tensor:
    return x


@policy("shift")
def _shift_only(x: torch.Tensor, seeds: torch.Tensor, opts: ViewOpts) -> torch.Tensor:
    return _shift(x, seeds, opts.pad)[0]


@policy("crop_flip")
def _crop_flip(x: torch.Tensor, seeds: torch.Tensor, opts: ViewOpts) -> torch.Tensor:
    out, rest = _shift(x, seeds, opts.pad)
    flip = (rest % 2 == 1).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


@policy("random_resized_crop")
def _random_resized_crop(x: torch.Tensor, seeds: torch.Tensor, opts: ViewOpts) -> torch.Tensor:
    """A crop of area ``scale`` and aspect ratio (width/height) ``ratio`` (log-uniform) of the image,
    resized back to the image's size (bilinear), mirrored with probability 1/2 when ``flip``. A crop
    that would not fit is clipped to the image rather than redrawn (one draw per seed)."""
    n, _, h, w = x.shape
    u = seed_uniforms(seeds, 5)
    area = opts.scale[0] + (opts.scale[1] - opts.scale[0]) * u[:, 0]
    lo, hi = np.log(opts.ratio[0]), np.log(opts.ratio[1])
    ratio = torch.exp(lo + (hi - lo) * u[:, 1])
    sw = torch.sqrt(area * ratio * h / w).clamp(max=1.0)  # crop width / image width
    sh = torch.sqrt(area / ratio * w / h).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - sw)  # crop centre in [-1, 1] coordinates, inside the image
    cy = (2 * u[:, 3] - 1) * (1 - sh)
    sx = torch.where(u[:, 4] < 0.5, -sw, sw) if opts.flip else sw
    zero = torch.zeros_like(sw)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, sh, cy], 1)], 1)
    theta = theta.to(x.device, torch.float32)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


def apply_views(x: torch.Tensor, seeds: torch.Tensor, name: str, pad: int = 2, **opts: Any) -> torch.Tensor:
    """The augmented views of images ``x`` [N, C, H, W] given one seed per image; ``opts`` are the
    other :class:`ViewOpts` (scale, ratio, flip)."""
    try:
        fn = _POLICIES[name]
    except KeyError:
        raise ConfigError(f"unknown augmentation policy {name!r}; known: {', '.join(policies())}") from None
    if name != "none" and x.dim() != 4:
        raise ConfigError(f"augmentation policy {name!r} needs images [N, C, H, W], got shape {tuple(x.shape)}")
    return fn(x, seeds, ViewOpts(pad=pad, **opts))


def view_opts(views: dict[str, Any]) -> dict[str, Any]:
    """The policy options of a view specification (a ``cache.views`` dump), defaults filled in."""
    d = ViewOpts()
    return {
        "scale": tuple(views.get("scale", d.scale)),
        "ratio": tuple(views.get("ratio", d.ratio)),
        "flip": views.get("flip", d.flip),
    }


# -- mixing: partners, coefficients and boxes drawn once, stored, replayed --------------------------


def mix_params(n: int, num_views: int, seed: int, mix: str, alpha: float, hw: tuple[int, int]) -> Optional[dict]:
    """The mixing of every (sample, view), or None for ``mix: none``: ``mix_partner`` int32 [N, V]
    (another sample), ``mix_lam`` float32 [N, V] (the weight of the sample itself, from
    Beta(alpha, alpha); for cutmix the kept area fraction) and for cutmix ``mix_box`` int16
    [N, V, 4] (top, left, bottom, right of the partner's pasted box). Deterministic in the arguments."""
    if mix == "none":
        return None
    if mix not in ("mixup", "cutmix"):
        raise ConfigError(f"unknown cache.views.mix {mix!r}; known: none, mixup, cutmix")
    rng = np.random.Generator(np.random.PCG64([seed, 0x313C]))
    if n > 1:  # a partner other than the sample itself
        partner = rng.integers(0, n - 1, size=(n, num_views))
        partner += partner >= np.arange(n)[:, None]
    else:
        partner = np.zeros((n, num_views), dtype=np.int64)
    lam = rng.beta(alpha, alpha, size=(n, num_views))
    out = {MIX_PARTNER: partner.astype(np.int32)}
    if mix == "cutmix":
        h, w = hw
        cut = np.sqrt(1.0 - lam)
        ch, cw = np.round(h * cut).astype(np.int64), np.round(w * cut).astype(np.int64)
        cy, cx = rng.integers(0, h, size=(n, num_views)), rng.integers(0, w, size=(n, num_views))
        top, left = np.clip(cy - ch // 2, 0, h), np.clip(cx - cw // 2, 0, w)
        bottom, right = np.clip(cy - ch // 2 + ch, 0, h), np.clip(cx - cw // 2 + cw, 0, w)
        out[MIX_BOX] = np.stack([top, left, bottom, right], axis=-1).astype(np.int16)
        lam = 1.0 - (bottom - top) * (right - left) / float(h * w)
    out[MIX_LAM] = lam.astype(np.float32)
    return out


def mix_images(
    x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, box: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``x`` mixed with ``partner`` (same shape): mixup ``lam * x + (1 - lam) * partner``, or, with
    ``box`` [N, 4], cutmix: the partner's pixels inside the box."""
    if box is None:
        lam = lam.to(x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return lam * x + (1 - lam) * partner
    h, w = x.shape[-2:]
    box = box.to(x.device, torch.long)
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 2:3])  # [N, H]
    in_cols = (cols >= box[:, 1:2]) & (cols < box[:, 3:4])  # [N, W]
    inside = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # [N, 1, H, W]
    return torch.where(inside, partner, x)


class Replayed(NamedTuple):
    """A batch of views: the images, and for mixed views each sample's partner and own weight."""

    x: torch.Tensor
    partner: Optional[torch.Tensor] = None  # dataset rows of the partners [B]
    lam: Optional[torch.Tensor] = None  # float32 [B]


def replay_views(
    xs: torch.Tensor,
    idx: torch.Tensor,
    views: torch.Tensor,
    seeds: torch.Tensor,
    mixing: Optional[dict[str, np.ndarray]],
    spec: dict[str, Any],
) -> Replayed:
    """The view ``views[k]`` of sample ``idx[k]`` of the split ``xs``, for every k: its mix with the
    stored partner (when ``mixing``) and then the policy's augmentation from its seed. The one
    function both the cache build (the teacher's input) and the student's loader call."""
    i, v = idx.cpu(), views.cpu()
    xb = xs[i.to(xs.device)]
    partner = lam = None
    if mixing is not None:
        ii, vv = i.numpy(), v.numpy()
        partner = torch.from_numpy(mixing[MIX_PARTNER][ii, vv].astype(np.int64))
        lam = torch.from_numpy(np.ascontiguousarray(mixing[MIX_LAM][ii, vv]))
        box = torch.from_numpy(mixing[MIX_BOX][ii, vv].astype(np.int64)) if MIX_BOX in mixing else None
        xb = mix_images(xb, xs[partner.to(xs.device)], lam, box)
    if spec["policy"] != "none":
        xb = apply_views(xb, seeds[i, v], spec["policy"], spec["pad"], **view_opts(spec))
    return Replayed(xb, partner, lam)
