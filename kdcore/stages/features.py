"""Stage `features`: run the teacher once over the data and store its logits and features."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from kdcore.config import PipelineConfig
from kdcore.cache import CacheEntry, build_entry, cache_key
from kdcore.hooks import FeatureTap
from kdcore.stages.env import StageEnv
from kdcore.train.device import autocast

CACHED_SPLITS = ("train", "val")


def teacher_paths(cfg: PipelineConfig) -> list[str]:
    """Every teacher module path the later stages read: configured extras, hint pairs, loss pairs."""
    from kdcore.losses import build_objective

    paths = list(cfg.cache.features)
    if cfg.pretrain.method == "hint":
        paths += [p.teacher for p in cfg.pretrain.pairs]
    paths += build_objective(cfg.distill.objective_spec()).teacher_paths
    return list(dict.fromkeys(paths))


def build_features(env: StageEnv, teacher: nn.Module, teacher_sha256: str, cache_dir: Path,
                   batch_size: int = 512) -> tuple[CacheEntry, bool]:
    """Build (or reuse) the cache entry of ``teacher`` on this data; returns (entry, built)."""
    paths = teacher_paths(env.cfg)
    dtype = env.cfg.cache.dtype
    key = cache_key(teacher_sha256, env.data.fingerprint, CACHED_SPLITS, paths, dtype)
    teacher.eval()

    def produce(split: str) -> Iterator[dict[str, torch.Tensor]]:
        x, _ = env.split(split)
        with FeatureTap(teacher, paths) as tap, torch.inference_mode():
            for i in range(0, len(x), batch_size):
                with autocast(env.device, env.amp_dtype):
                    logits = teacher(x[i:i + batch_size])
                yield {"logits": logits.float(), **{p: tap.features[p].float() for p in paths}}

    meta = {"teacher_sha256": teacher_sha256, "data_fingerprint": env.data.fingerprint, "paths": paths,
            "views": {"augment": None, "num_views": 1}}
    counts = {s: len(getattr(env.data, s)) for s in CACHED_SPLITS}
    return build_entry(cache_dir, key, meta, counts, produce, dtype=dtype)
