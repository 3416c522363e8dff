"""Speech and text datasets after splitting: padding, masks, normalisation, vocabulary, fingerprint.

Loaders of sequence data return variable-length samples (:class:`~kdcore.data.registry.RawData`
with ``modality`` "speech" or "text"):

* speech: ``x`` an object array of float arrays ``[T_i, F]`` (frames x coefficients);
* text: ``x`` an object array of strings.

:func:`prepare_sequences` turns the three splits into the one-tensor inputs the sequence models
take (see :mod:`kdcore.models.sequence`):

* speech: float32 ``[N, T, F + 1]``, zero-padded to the longest sample of all splits, the last
  channel a validity mask; features normalised per coefficient with the mean/std of the valid
  TRAIN frames (padding stays 0, the mask is untouched);
* text: int64 ``[N, max_len]`` token ids padded with 0, from a :class:`~kdcore.text.Vocabulary`
  built on the TRAIN split only (``raw.options``: tokenizer, lowercase, max_len, min_freq,
  max_vocab). Every text is encoded to ``max_len`` ids, so a model exported with a fixed input
  shape (MLflow's default) takes any text encoded by its vocabulary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kdcore.data.bundle import DataBundle, Split, content_fingerprint
from kdcore.errors import DataError
from kdcore.speech.frames import FrameSpec
from kdcore.text import Vocabulary

SEQUENCE_MODALITIES = ("speech", "text")
TEXT_OPTIONS = ("tokenizer", "lowercase", "max_len", "min_freq", "max_vocab")
TEXT_DEFAULTS: dict[str, Any] = {
    "tokenizer": "word",
    "lowercase": True,
    "max_len": 64,
    "min_freq": 1,
    "max_vocab": None,
}


def text_options(given: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    """The tokenisation options: kdflow defaults < the dataset's defaults < ``data.options``."""
    out = {**TEXT_DEFAULTS, **defaults, **{k: v for k, v in given.items() if k in TEXT_OPTIONS}}
    for key in ("max_len", "min_freq"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"data.options.{key} must be a positive integer, got {v!r}")
    v = out["max_vocab"]
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 3):
        raise DataError(f"data.options.max_vocab must be an integer >= 3 (or null for no limit), got {v!r}")
    if not isinstance(out["lowercase"], bool):
        raise DataError(f"data.options.lowercase must be true or false, got {out['lowercase']!r}")
    from kdcore.text import TOKENIZERS

    if out["tokenizer"] not in TOKENIZERS:
        raise DataError(f"data.options.tokenizer {out['tokenizer']!r} is not one of {', '.join(TOKENIZERS.names())}")
    return out


def validate_sequences(name: str, parts: dict[str, tuple[np.ndarray, np.ndarray]], modality: str, where: str) -> None:
    """Raise a DataError when a speech/text part holds something other than documented."""
    features = None
    for part, (x, _) in parts.items():
        if x.ndim != 1:
            raise DataError(
                f"dataset {name}{where}: {part} must be a 1-D array of {modality} samples, got shape {x.shape}"
            )
        for i, sample in enumerate(x):
            if modality == "text":
                if not isinstance(sample, str):
                    raise DataError(
                        f"dataset {name}{where}: {part} sample {i} is {type(sample).__name__}, not a string"
                    )
                continue
            arr = np.asarray(sample)
            if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.floating):
                raise DataError(
                    f"dataset {name}{where}: {part} sample {i} must be float frames [T, F] with T >= 1, "
                    f"got {arr.dtype} {arr.shape}"
                )
            if features is None:
                features = arr.shape[1]
            elif arr.shape[1] != features:
                raise DataError(
                    f"dataset {name}{where}: {part} sample {i} has {arr.shape[1]} features per frame, "
                    f"others have {features}"
                )
            if not np.isfinite(arr).all():
                raise DataError(f"dataset {name}{where}: {part} sample {i} contains NaN or infinite values")


def pad_frames(samples: np.ndarray, steps: int) -> np.ndarray:
    """float32 ``[N, steps, F + 1]``: frames zero-padded at the end, last channel 1.0 on real frames."""
    f = np.asarray(samples[0]).shape[1]
    out = np.zeros((len(samples), steps, f + 1), dtype=np.float32)
    for i, s in enumerate(samples):
        s = np.asarray(s, dtype=np.float32)
        out[i, : len(s), :f] = s
        out[i, : len(s), f] = 1.0
    return out


def frame_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-coefficient mean and std over the valid frames of padded ``[N, T, F + 1]`` (float64)."""
    valid = x[..., -1] > 0.5
    frames = x[..., :-1][valid].astype(np.float64)
    mean, std = frames.mean(axis=0), frames.std(axis=0)
    std[std < 1e-6] = 1.0
    return mean, std


def normalize_frames(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    out = x.copy()
    valid = out[..., -1:] > 0.5
    feats = (out[..., :-1] - mean.astype(np.float32)) / std.astype(np.float32)
    out[..., :-1] = np.where(valid, feats, 0.0)
    return out


def prepare_sequences(
    name: str, raw, parts: dict[str, tuple[np.ndarray, np.ndarray]], params: dict[str, Any]
) -> DataBundle:
    """The :class:`DataBundle` of a speech or text dataset from its train/val/test parts."""
    ys = {k: np.asarray(y, dtype=np.int64) for k, (_, y) in parts.items()}
    extras: dict[str, Any] = {}
    mean: list[float] = []
    std: list[float] = []
    if raw.modality == "speech":
        steps = max(len(s) for x, _ in parts.values() for s in x)
        padded = {k: pad_frames(x, steps) for k, (x, _) in parts.items()}
        m, s = frame_stats(padded["train"])
        mean, std = [float(v) for v in m], [float(v) for v in s]
        fingerprint = content_fingerprint(name, {k: (padded[k], ys[k]) for k in padded}, params, 1.0, raw.class_names)
        xs = {k: torch.from_numpy(normalize_frames(v, m, s)) for k, v in padded.items()}
        extras["frames"] = FrameSpec(steps, mean, std, list(raw.class_names), dict(raw.options))
    else:
        opts = text_options(raw.options)
        vocab = Vocabulary.build(
            parts["train"][0],
            tokenizer=opts["tokenizer"],
            lowercase=opts["lowercase"],
            max_len=opts["max_len"],
            min_freq=opts["min_freq"],
            max_size=opts["max_vocab"],
            class_names=raw.class_names,
        )
        if len(vocab) <= 2:  # PAD and UNK alone: every text would read as unknown tokens
            raise DataError(
                f"dataset {name}: the vocabulary is empty: no token of the training texts occurs "
                f"data.options.min_freq = {opts['min_freq']} times or more; lower min_freq"
            )
        xs = {k: vocab.encode(list(x), length=vocab.max_len) for k, (x, _) in parts.items()}
        fingerprint = content_fingerprint(
            name,
            {k: (xs[k].numpy(), ys[k]) for k in xs},
            {**params, "text": opts, "vocab_sha256": vocab.sha256},
            1.0,
            raw.class_names,
        )
        extras["vocab"] = vocab
    splits = {k: Split(xs[k], torch.from_numpy(ys[k])) for k in xs}
    return DataBundle(
        name=name,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        num_classes=len(raw.class_names),
        class_names=list(raw.class_names),
        input_shape=tuple(int(d) for d in xs["train"].shape[1:]),
        modality=raw.modality,
        fingerprint=fingerprint,
        mean=mean,
        std=std,
        extras=extras,
    )
