"""Datasets: ``load_dataset(cfg.data) -> DataBundle`` (in memory, split, normalised, fingerprinted).

Built-in datasets: images ``digits``, ``mnist5k``, ``fashion_mnist``, ``cifar10``, ``cifar100``,
``imagefolder``, ``image_csv``; speech ``japanese_vowels``, ``audio_folder``; text ``rotten_tomatoes``,
``chinese_reviews``, ``text_csv``. Register your own with ``@DATASETS.register("name")`` (see
:mod:`.registry`).
"""

from __future__ import annotations

from kdcore.config import DataConfig

# the built-in loaders register themselves on import
from kdcore.data import (  # noqa: E402,F401  # noqa: E402,F401
    audio_folder,
    chinese_reviews,
    cifar,
    fashion_mnist,
    image_csv,  # noqa: E402,F401
    imagefolder,
    japanese_vowels,
    mnist5k,
    npz,
    rotten_tomatoes,
    sklearn_digits,
    text_csv,
)
from kdcore.data.bundle import DataBundle, Split, channel_stats, content_fingerprint, to_split
from kdcore.data.image_files import IMAGE_FILES, keep_in_memory  # noqa: E402
from kdcore.data.registry import DATASETS, RawData, validate_raw
from kdcore.data.sequences import prepare_sequences
from kdcore.data.splits import SplitIndices, make_splits

__all__ = ["DATASETS", "DataBundle", "RawData", "Split", "SplitIndices", "load_dataset", "make_splits"]


def load_dataset(cfg: DataConfig) -> DataBundle:
    """Load ``cfg.name``, split it (seeded, stratified), limit, normalise with train statistics,
    validate, and fingerprint. Raises :class:`~kdcore.errors.DataError` on any data problem.

    Image files (``imagefolder``, ``image_csv``) that are not kept in memory (``data.in_memory``)
    come back streamed: their splits decode files lazily (:mod:`kdcore.data.stream`)."""
    if cfg.name in IMAGE_FILES and DATASETS.get(cfg.name) is _BUILTIN_FILE_LOADERS.get(cfg.name):
        files = IMAGE_FILES[cfg.name](cfg)
        if not keep_in_memory(cfg, files):
            from kdcore.data.stream import stream_bundle

            return stream_bundle(cfg, files)
        from kdcore.data.imagefolder import read_files

        raw = read_files(files, cfg.image_size)
        validate_raw(cfg.name, raw)
        return _in_memory(cfg, raw)
    loader = DATASETS.get(cfg.name)
    raw = loader(cfg)
    validate_raw(cfg.name, raw)
    return _in_memory(cfg, raw)


def _in_memory(cfg: DataConfig, raw: RawData) -> DataBundle:
    # validate_raw: test_x and test_y are both set (has_test) or both None
    idx = make_splits(cfg.name, raw.train_y, len(raw.test_y) if raw.test_y is not None else None, cfg)
    test_x, test_y = raw.train_x, raw.train_y
    if idx.test_is_official:
        assert raw.test_x is not None and raw.test_y is not None
        test_x, test_y = raw.test_x, raw.test_y
    parts = idx.take(raw.train_x, raw.train_y, test_x, test_y)
    params = idx.params(cfg)
    if raw.modality != "image":  # speech / text: padding, masks, vocabulary (kdcore.data.sequences)
        return prepare_sequences(cfg.name, raw, parts, params)
    fingerprint = content_fingerprint(cfg.name, parts, params, raw.scale, raw.class_names)

    train_x = parts["train"][0]
    mean, std = channel_stats(train_x, raw.scale)
    splits = {k: to_split(x, y, raw.scale, mean, std) for k, (x, y) in parts.items()}
    return DataBundle(
        name=cfg.name,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=len(raw.class_names),
        class_names=list(raw.class_names),
        input_shape=tuple(int(d) for d in train_x.shape[1:]),
        modality=raw.modality,
        fingerprint=fingerprint,
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
    )


_BUILTIN_FILE_LOADERS = {"imagefolder": imagefolder.load_imagefolder, "image_csv": image_csv.load_image_csv}
