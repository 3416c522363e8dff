"""The dataset registry and the contract its loaders follow.

A loader is ``fn(cfg: DataConfig) -> RawData``: it finds and reads the files, and returns the raw
pixels (uint8, or float already in [0, scale]) of a train pool and, when the source has one, of
the official test set. Splitting, limiting, normalising and fingerprinting are done once for all
loaders by :func:`kdcore.data.load_dataset`.

Add your own dataset without editing the library::

    from kdcore.data import DATASETS, RawData

    @DATASETS.register("my_dataset")
    def load_my_dataset(cfg):
        ...
        return RawData(train_x=x, train_y=y, class_names=names, source="/path/read")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from kdcore.config import DataConfig
from kdcore.errors import ConfigError, DataError
from kdcore.registry import Registry


@dataclass
class RawData:
    """What a loader returns.

    ``*_x``: images [N, C, H, W], uint8 or float in [0, ``scale``]; for ``modality`` "speech" an
    object array of float frames [T_i, F], for "text" an object array of strings (see
    :mod:`kdcore.data.sequences`); ``*_y``: integer labels [N].
    ``test_x``/``test_y`` are None when the source has no official test split (one is carved
    from the train pool then). ``source`` says where the data was read from (used in messages).
    ``options`` are the resolved preparation options of sequence data (text: tokenisation).
    """

    train_x: np.ndarray
    train_y: np.ndarray
    class_names: list[str]
    test_x: Optional[np.ndarray] = None
    test_y: Optional[np.ndarray] = None
    scale: float = 255.0
    source: str = ""
    modality: str = "image"
    options: dict = field(default_factory=dict)

    @property
    def has_test(self) -> bool:
        return self.test_x is not None

    def parts(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {"train pool": (self.train_x, self.train_y)}
        if self.test_x is not None and self.test_y is not None:
            out["test set"] = (self.test_x, self.test_y)
        return out


DATASETS: Registry[Callable[[DataConfig], RawData]] = Registry("dataset")


def validate_raw(name: str, raw: RawData) -> None:
    """Raise a :class:`DataError` if ``raw`` is empty, mis-shaped, has bad labels or NaNs."""
    where = f" (read from {raw.source})" if raw.source else ""
    if (raw.test_x is None) != (raw.test_y is None):
        raise DataError(f"dataset {name}{where}: the test set has images but no labels, or the reverse")
    num_classes = len(raw.class_names)
    if num_classes == 0:
        raise DataError(f"dataset {name}{where} has no classes")
    if len(raw.train_y) == 0:
        raise DataError(f"dataset {name} has no samples{where}")
    if raw.modality != "image":
        from kdcore.data.sequences import SEQUENCE_MODALITIES, validate_sequences

        if raw.modality not in SEQUENCE_MODALITIES:
            raise DataError(f"dataset {name}{where}: unknown modality {raw.modality!r} (image, speech or text)")
        validate_sequences(name, raw.parts(), raw.modality, where)
    for part, (x, y) in raw.parts().items():
        if raw.modality == "image" and x.ndim != 4:
            raise DataError(f"dataset {name}{where}: {part} images must be [N, C, H, W], got shape {tuple(x.shape)}")
        if len(x) != len(y):
            raise DataError(f"dataset {name}{where}: {part} has {len(x)} images but {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"dataset {name} has no samples in its {part}{where}")
        if not np.issubdtype(np.asarray(y).dtype, np.integer):
            raise DataError(f"dataset {name}{where}: {part} labels must be integers, got dtype {np.asarray(y).dtype}")
        bad = (y < 0) | (y >= num_classes)
        if bad.any():
            values = np.unique(y[bad])
            shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if len(values) > 10 else "")
            raise DataError(
                f"dataset {name}{where}: {part} has {int(bad.sum())} labels outside [0, {num_classes}) "
                f"for {num_classes} classes: {shown}"
            )
        if raw.modality != "image":
            continue
        if np.issubdtype(x.dtype, np.floating):
            finite = np.isfinite(x)
            if not finite.all():
                n_bad = int((~finite).sum())
                first = int(np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))[0])
                kind = "NaN" if np.isnan(x).any() else "infinite"
                raise DataError(
                    f"dataset {name}{where}: {part} contains {n_bad} {kind} values (first in sample {first})"
                )
        elif not np.issubdtype(x.dtype, np.integer):
            raise DataError(f"dataset {name}{where}: {part} images have unsupported dtype {x.dtype}")
    check_classes(name, raw.train_y, raw.class_names, where)
    if raw.modality == "image" and raw.test_x is not None and raw.test_x.shape[1:] != raw.train_x.shape[1:]:
        raise DataError(
            f"dataset {name}{where}: test images are {tuple(raw.test_x.shape[1:])} "
            f"but train images are {tuple(raw.train_x.shape[1:])}"
        )


def check_classes(name: str, train_y: np.ndarray, class_names: list[str], where: str = "") -> None:
    """Raise a :class:`DataError` unless the train pool holds at least two classes and a sample of
    every class it names (an empty class folder, a label seen only in the test set)."""
    if len(class_names) < 2:
        shown = f" ({class_names[0]!r})" if class_names else ""
        raise DataError(f"dataset {name}{where} has {len(class_names)} class{shown}: classification needs at least 2")
    counts = np.bincount(np.asarray(train_y, dtype=np.int64), minlength=len(class_names))
    empty = [class_names[i] for i in np.flatnonzero(counts[: len(class_names)] == 0)]
    if empty:
        shown = ", ".join(map(repr, empty[:10])) + (", ..." if len(empty) > 10 else "")
        raise DataError(
            f"dataset {name}{where}: {len(empty)} of its {len(class_names)} classes have no training samples: "
            f"{shown} (an empty class folder, or a label only the test set has); remove them or add samples"
        )


def check_options(cfg: DataConfig, allowed: Iterable[str] = ()) -> None:
    """Fail on ``data.options`` keys the dataset does not understand (a typo would pass silently)."""
    allowed = set(allowed)
    unknown = sorted(set(cfg.options) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) if allowed else "no options"
        raise ConfigError(f"data.options: dataset {cfg.name} does not know {', '.join(unknown)} (it takes {takes})")


def data_home() -> Path:
    """Where downloaded datasets go by default: ``$KDFLOW_HOME/data`` (``./.kdflow/data``)."""
    return Path(os.environ.get("KDFLOW_HOME") or ".kdflow") / "data"


def data_root(cfg: DataConfig) -> Path:
    """``data.root`` if set, else :func:`data_home`."""
    return Path(cfg.root).expanduser() if cfg.root else data_home()
