"""Stage `features`: run the teacher once over the data and store its logits and features.

The train split is stored for every augmented view (``cache.views``); val is stored as is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from kdcore.cache import CacheEntry, build_entry, key_fields
from kdcore.config import PipelineConfig
from kdcore.data.augment import apply_views, view_seeds
from kdcore.hooks import FeatureTap
from kdcore.stages.env import StageEnv
from kdcore.train.device import autocast

CACHED_SPLITS = ("train", "val")
NO_VIEWS = {"policy": "none", "num_views": 1, "pad": 0, "seed": 0}


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
    return cfg.cache.views.model_dump() if split == "train" else dict(NO_VIEWS)


def build_features(env: StageEnv, teacher: nn.Module, teacher_sha256: str, cache_dir: Path,
                   batch_size: int = 512) -> dict[str, tuple[CacheEntry, bool]]:
    """Build (or reuse) the cache entry of each split; returns {split: (entry, built)}."""
    cfg = env.cfg
    paths = teacher_paths(cfg)
    teacher.eval()
    out = {}
    for split in CACHED_SPLITS:
        views = split_views(cfg, split)
        x, _ = env.split(split)
        seeds = view_seeds(len(x), views["num_views"], views["seed"])
        fields = key_fields(teacher_sha256, env.data.fingerprint, split, views, cfg.cache.dtype, cfg.cache.topk)

        def produce(x=x, seeds=seeds, views=views) -> Iterator[dict[str, torch.Tensor]]:
            with FeatureTap(teacher, paths) as tap, torch.inference_mode():
                for i in range(0, len(x), batch_size):
                    per_view: list[dict[str, torch.Tensor]] = []
                    for v in range(views["num_views"]):
                        s = torch.from_numpy(seeds[i:i + batch_size, v])
                        xb = apply_views(x[i:i + batch_size], s, views["policy"], views["pad"])
                        with autocast(env.device, env.amp_dtype):
                            logits = teacher(xb)
                        per_view.append({"logits": logits.float(), **{p: tap.features[p].float() for p in paths}})
                    yield {k: torch.stack([pv[k] for pv in per_view], dim=1) for k in per_view[0]}

        out[split] = build_entry(cache_dir, fields, paths, len(x), views["num_views"], seeds, produce,
                                 rebuild=cfg.cache.rebuild, checksums=cfg.cache.verify == "sha256",
                                 num_classes=env.data.num_classes)
    return out
