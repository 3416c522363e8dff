"""Run a speech classifier on new recordings (WAV files) or frames: encode them as the training data
was (:class:`~kdcore.speech.frames.FrameSpec`), predict in batches."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from kdcore.errors import KdflowError
from kdcore.predict_raw import encoded_logits
from kdcore.speech.frames import FrameSpec


def frame_logits(model: nn.Module, spec: FrameSpec, clips: Sequence[np.ndarray], batch_size: int = 256) -> torch.Tensor:
    """Logits ``[N, C]`` (float32, CPU) of ``model`` for frames ``[T_i, F]`` (unnormalised, as the
    dataset's loader made them). ``model`` may be a kdcore model or the registered one MLflow loads
    back (exported with the training inputs' ``[N, steps, F + 1]`` shape)."""
    return encoded_logits(model, spec.encode, list(clips), len(spec.class_names), batch_size)


def wav_frames(spec: FrameSpec, paths: Sequence[str | Path]) -> list[np.ndarray]:
    """Frames of WAV files through the model's stored front end (``audio_folder`` data only)."""
    if not spec.frontend:
        raise KdflowError(
            "this model was trained on frames a dataset loader gave (not on WAV files through audio_folder's "
            "front end): compute the same frames and use frame_logits / classify_frames"
        )
    from kdcore.data.audio_folder import audio_features, read_wav

    opts = spec.frontend
    return [audio_features(read_wav(Path(p), opts["sample_rate"], opts.get("max_seconds")), opts) for p in paths]


def classify_frames(model: nn.Module, spec: FrameSpec, clips: Sequence[np.ndarray], batch_size: int = 256) -> list[str]:
    """The predicted class name of each clip of frames (class index as text without names)."""
    pred = frame_logits(model, spec, clips, batch_size).argmax(1).tolist()
    return [spec.class_names[p] if p < len(spec.class_names) else str(p) for p in pred]


def classify_wavs(model: nn.Module, spec: FrameSpec, paths: Sequence[str | Path], batch_size: int = 256) -> list[str]:
    """The predicted class name of each WAV file (read, resampled and framed as in training)."""
    return classify_frames(model, spec, wav_frames(spec, paths), batch_size)
