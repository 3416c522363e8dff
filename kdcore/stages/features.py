"""Stage `features`: run the teacher once over the data and store its logits and features.

The train split is stored for every augmented view (``cache.views``); val is stored as is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from kdcore.cache import CacheEntry, build_entry, key_fields
from kdcore.cache.store import CROPS
from kdcore.config import PipelineConfig
from kdcore.data.augment import mix_params, replay_views, view_seeds
from kdcore.errors import ConfigError
from kdcore.hooks import FeatureTap
from kdcore.stages.env import StageEnv, fp32
from kdcore.train.batches import as_input, make_loader
from kdcore.train.device import autocast as device_autocast
from kdcore.train.device import forward_batch_size

CACHED_SPLITS = ("train", "val")
NO_VIEWS = {"policy": "none", "num_views": 1, "pad": 0, "seed": 0}
MIX_STREAMED = (
    "cache.views.mix needs the images in memory: streamed image data (data.in_memory false, or auto over "
    "data.memory_budget) cannot be mixed; set cache.views.mix: none or data.in_memory: true"
)


def teacher_paths(cfg: PipelineConfig) -> list[str]:
    """Every teacher module path the later stages read: configured extras, hint pairs, loss pairs."""
    from kdcore.losses import build_objective

    paths = list(cfg.cache.features)
    if cfg.pretrain.method == "hint":
        paths += [p.teacher for p in cfg.pretrain.pairs]
    if cfg.pretrain.method == "teacher_layers" and cfg.pretrain.losses:
        paths += build_objective(cfg.pretrain.losses).teacher_paths
    paths += build_objective(cfg.distill.objective_spec()).teacher_paths
    return list(dict.fromkeys(paths))


def split_views(cfg: PipelineConfig, split: str) -> dict[str, Any]:
    """The view specification of a split: the configured augmentation for train, none elsewhere."""
    return cfg.cache.views.spec() if split == "train" else dict(NO_VIEWS)


def split_mixing(env: StageEnv, split: str, n: int, views: dict[str, Any]) -> Optional[dict[str, np.ndarray]]:
    """The mixing arrays of a split's views (:func:`kdcore.data.augment.mix_params`), None unmixed."""
    if views.get("mix", "none") == "none":
        return None
    if env.streaming:
        raise ConfigError(MIX_STREAMED)
    h, w = env.example(split, 1).shape[-2:]
    return mix_params(n, views["num_views"], views["seed"], views["mix"], views.get("mix_alpha", 1.0), (h, w))


def build_features(
    env: StageEnv, teacher: nn.Module, teacher_sha256: str, cache_dir: Path, batch_size: Optional[int] = None
) -> dict[str, tuple[CacheEntry, bool]]:
    """Build (or reuse) the cache entry of each split; returns {split: (entry, built)}.

    The teacher runs in float32 (no autocast): cached outputs are exact; with ``cache.precision: amp``
    under trainer.amp's autocast (faster, outputs rounded; keyed apart). Progress is reported as
    ``callbacks.on_progress("cache", samples done, samples of both splits)``. ``batch_size``:
    samples per teacher forward (default: kdcore.train.device's :func:`forward_batch_size`)."""
    cfg = env.cfg
    batch_size = batch_size or forward_batch_size(env.device, tuple(env.data.input_shape))
    paths = teacher_paths(cfg)
    teacher = env.place(teacher).eval()
    amp = env.amp_dtype if cfg.cache.precision == "amp" else None
    precision = "float32" if amp is None else str(amp).removeprefix("torch.")
    if env.channels_last:  # NHWC kernels round differently
        precision += "+channels_last"

    def forward_precision_block():
        return device_autocast(env.device, amp) if amp is not None else fp32(env.device)

    total = sum(len(getattr(env.data, split)) for split in CACHED_SPLITS)
    done = 0
    out = {}
    for split in CACHED_SPLITS:
        views = split_views(cfg, split)
        n = len(getattr(env.data, split))
        seeds = view_seeds(n, views["num_views"], views["seed"])
        mixing = split_mixing(env, split, n, views)
        fields = key_fields(
            teacher_sha256, env.data.fingerprint, split, views, cfg.cache.dtype, cfg.cache.topk, precision
        )
        batches = _streamed_views if env.streaming else _tensor_views

        def produce(
            split=split, seeds=seeds, views=views, batches=batches, mixing=mixing
        ) -> Iterator[dict[str, torch.Tensor]]:
            nonlocal done
            with FeatureTap(teacher, paths) as tap, torch.inference_mode(), forward_precision_block():
                for per_view in batches(env, split, seeds, views, batch_size, mixing):
                    outs = []
                    for xb, extra in per_view:
                        logits = teacher(xb)
                        outs.append({"logits": logits.float(), **{p: tap.features[p].float() for p in paths}, **extra})
                    batch = {k: torch.stack([o[k] for o in outs], dim=1) for k in outs[0]}
                    done += batch["logits"].shape[0]
                    env.callbacks.on_progress("cache", done, total)
                    yield batch

        out[split] = build_entry(
            cache_dir,
            fields,
            paths,
            n,
            views["num_views"],
            seeds,
            produce,
            rebuild=cfg.cache.rebuild,
            checksums=cfg.cache.verify == "sha256",
            num_classes=env.data.num_classes,
            arrays=mixing,
        )
        if not out[split][1]:  # reused: nothing was computed, the split counts as done
            done += n
            env.callbacks.on_progress("cache", done, total)
    return out


ViewBatches = Iterator[list[tuple[torch.Tensor, dict[str, torch.Tensor]]]]


def _tensor_views(env: StageEnv, split: str, seeds, views: dict[str, Any], batch_size: int, mixing=None) -> ViewBatches:
    """In-memory tensors: for each chunk of samples, its views (mixing and augmentation applied on
    tensors by :func:`replay_views`, as the student's loader does)."""
    x, _ = env.split(split)
    seeds_t = torch.from_numpy(seeds)
    for i in range(0, len(x), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(x)))
        yield [
            (replay_views(x, idx, torch.full_like(idx, v), seeds_t, mixing, views).x, {})
            for v in range(views["num_views"])
        ]


def _streamed_views(
    env: StageEnv, split: str, seeds, views: dict[str, Any], batch_size: int, mixing=None
) -> ViewBatches:
    """Streamed files: the loader decodes each chunk once per view and cuts the view drawn from its
    seed (train) or the eval view (val); the crops come back and are stored with the outputs."""
    if mixing is not None:
        raise ConfigError(MIX_STREAMED)
    s = getattr(env.data, split)
    n, num_views = len(s), views["num_views"]
    chunks = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    train = split == "train"
    items = [[(i, int(seeds[i, v])) if train else i for i in chunk] for chunk in chunks for v in range(num_views)]
    dataset = s.dataset()
    loader = iter(make_loader(dataset, items, s.num_workers, env.device))
    for _ in chunks:
        per_view = []
        for _v in range(num_views):
            raw = next(loader)
            extra = {CROPS: raw["crop"]} if train else {}
            per_view.append((as_input(dataset, raw["x"], env.device), extra))
        yield per_view
