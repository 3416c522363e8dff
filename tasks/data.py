"""Loading the dataset once per process, keyed by its config section."""

from __future__ import annotations

import functools
import json

from kdcore.config import DataConfig
from kdcore.data import load_dataset
from kdcore.data.bundle import DataBundle


@functools.lru_cache(maxsize=4)
def _load(section_json: str) -> DataBundle:
    return load_dataset(DataConfig.model_validate(json.loads(section_json)))


def load_data(cfg: DataConfig) -> DataBundle:
    return _load(json.dumps(cfg.model_dump(mode="json"), sort_keys=True))
