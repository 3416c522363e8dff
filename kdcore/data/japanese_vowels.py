"""``japanese_vowels``: the JapaneseVowels speaker set (UCI; Kudo, Toyama & Shimbo 1999).

Nine male speakers uttered the Japanese vowels /ae/; each utterance is a sequence of 7-29 frames of
12 LPC cepstrum coefficients computed from the real recordings. The task: which speaker (classes
"1".."9"). Official split: 270 train utterances (30 per speaker), 370 test.

Read from the ``.ts`` files (sktime/aeon time-series format) shipped inside the ``aeon`` package
(``aeon/datasets/data/JapaneseVowels/JapaneseVowels_{TRAIN,TEST}.ts``), installed without its
dependencies (``pip install --no-deps aeon``) and parsed here: header lines start with ``@`` (or
``#`` for comments); after ``@data`` each line is one case, its dimensions separated by ``:``,
each dimension's values by ``,``, the class label last.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdcore.config import DataConfig
from kdcore.data.package_files import package_file
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.errors import DataError

FOLDER = Path("datasets") / "data" / "JapaneseVowels"


def read_ts(path: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Cases ``[T_i, D]`` (float32), their labels, and the class labels the header declares."""
    header: dict[str, str] = {}
    cases: list[np.ndarray] = []
    labels: list[str] = []
    in_data = False
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if not line.startswith("@"):
                    raise DataError(f"{path}:{lineno}: expected a header line starting with '@', got {line[:40]!r}")
                key, _, value = line[1:].partition(" ")
                if key.lower() == "data":
                    in_data = True
                else:
                    header[key.lower()] = value.strip()
                continue
            *dims, label = line.split(":")
            try:
                series = [np.array([float(v) for v in d.split(",")], dtype=np.float32) for d in dims]
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: cannot read the values ({exc})") from None
            if len({len(s) for s in series}) != 1:
                raise DataError(f"{path}:{lineno}: the dimensions of one case have different lengths")
            cases.append(np.stack(series, axis=1))
            labels.append(label.strip())
    if not in_data:
        raise DataError(f"{path} has no @data section")
    declared = header.get("classlabel", "").split()
    if not declared or declared[0].lower() != "true":
        raise DataError(f"{path}: the header declares no class labels (@classLabel true ...)")
    n_dims = header.get("dimensions")
    if n_dims is not None and cases and any(c.shape[1] != int(n_dims) for c in cases):
        raise DataError(f"{path}: cases do not all have the {n_dims} dimensions the header declares")
    return cases, labels, declared[1:]


def _as_arrays(cases: list[np.ndarray], labels: list[str], classes: list[str], path: Path):
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(f"{path}: labels {unknown[:5]} are not among the declared classes {classes}")
    x = np.empty(len(cases), dtype=object)
    x[:] = cases
    return x, np.array([index[lab] for lab in labels], dtype=np.int64)


@DATASETS.register("japanese_vowels")
def load_japanese_vowels(cfg: DataConfig) -> RawData:
    check_options(cfg)
    train_path = package_file("japanese_vowels", "aeon", FOLDER / "JapaneseVowels_TRAIN.ts")
    test_path = package_file("japanese_vowels", "aeon", FOLDER / "JapaneseVowels_TEST.ts")
    train_cases, train_labels, classes = read_ts(train_path)
    test_cases, test_labels, test_classes = read_ts(test_path)
    if test_classes != classes:
        raise DataError(f"{test_path} declares classes {test_classes}, the train file {classes}")
    train_x, train_y = _as_arrays(train_cases, train_labels, classes, train_path)
    test_x, test_y = _as_arrays(test_cases, test_labels, classes, test_path)
    return RawData(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        class_names=classes,
        scale=1.0,
        source=str(train_path.parent),
        modality="speech",
    )
