"""What a speech model needs beside its weights to read new recordings: the frame count its inputs
were padded to, the per-coefficient normalisation of the train split, the class names and, for
``audio_folder`` data, the audio front end that turned WAV files into frames (``frames.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from kdcore.errors import KdflowError
from kdcore.json_file import JsonFile

FORMAT = "kdflow-frames/1"


@dataclass
class FrameSpec(JsonFile):
    """``steps``: frames per input (longer clips are cut, shorter ones padded and masked); ``mean`` /
    ``std``: per coefficient, of the valid train frames; ``frontend``: ``audio_folder``'s
    ``data.options`` (sample_rate, features, n_mfcc, ...), empty for data given as frames."""

    what: ClassVar[str] = "frame spec"
    steps: int
    mean: list[float]
    std: list[float]
    class_names: list[str] = field(default_factory=list)
    frontend: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise KdflowError(f"frame spec: steps must be a positive integer, got {self.steps!r}")
        if len(self.mean) != len(self.std) or not self.mean:
            raise KdflowError(
                f"frame spec: mean and std must be non-empty and of one length, got {len(self.mean)}, {len(self.std)}"
            )

    @property
    def num_features(self) -> int:
        return len(self.mean)

    def encode(self, clips: Sequence[np.ndarray]) -> torch.Tensor:
        """float32 ``[N, steps, F + 1]`` from frames ``[T_i, F]`` as the training data was made:
        cut to ``steps``, zero-padded with a validity mask in the last channel, normalised."""
        from kdcore.data.sequences import normalize_frames, pad_frames

        arrays = []
        for i, c in enumerate(clips):
            a = np.asarray(c, dtype=np.float32)
            if a.ndim != 2 or a.shape[1] != self.num_features or len(a) == 0:
                raise KdflowError(
                    f"clip {i}: frames must be [T, {self.num_features}] with T >= 1, got shape {tuple(a.shape)}"
                )
            arrays.append(a[: self.steps])
        samples = np.empty(len(arrays), dtype=object)
        samples[:] = arrays
        if not arrays:
            return torch.zeros(0, self.steps, self.num_features + 1)
        padded = pad_frames(samples, self.steps)
        return torch.from_numpy(normalize_frames(padded, np.asarray(self.mean), np.asarray(self.std)))

    # ---- storage -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "steps": self.steps,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
            "frontend": dict(self.frontend),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrameSpec":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise KdflowError(f"not a kdflow frame spec (expected format {FORMAT!r})")
        return cls(
            int(d["steps"]),
            [float(v) for v in d["mean"]],
            [float(v) for v in d["std"]],
            list(d.get("class_names", [])),
            dict(d.get("frontend", {})),
        )
