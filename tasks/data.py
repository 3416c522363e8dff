"""Loading the dataset once per process, keyed by its config section."""

from __future__ import annotations

import functools
import json

from kdcore.config import DataConfig, PipelineConfig
from kdcore.data import load_dataset
from kdcore.data.bundle import DataBundle
from kdcore.data.stream import is_streamed


@functools.lru_cache(maxsize=4)
def _load(section_json: str) -> DataBundle:
    return load_dataset(DataConfig.model_validate(json.loads(section_json)))


def load_data(cfg: DataConfig) -> DataBundle:
    return _load(json.dumps(cfg.model_dump(mode="json"), sort_keys=True))


def for_data(cfg: PipelineConfig, data: DataBundle) -> PipelineConfig:
    """``cfg`` as the stages run it on ``data``: streamed images cut their views with
    ``data.augment``, so the in-memory view policy is reset (:meth:`ViewsConfig.for_streamed`) and
    editing it does not make the stages train again."""
    if not is_streamed(data.train):
        return cfg
    return cfg.model_copy(update={"cache": cfg.cache.model_copy(update={"views": cfg.cache.views.for_streamed()})})
