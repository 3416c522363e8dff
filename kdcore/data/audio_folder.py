"""``audio_folder``: your own WAV recordings, one sub-folder per class (the Speech Commands layout).

    root/<label>/*.wav          e.g. root/yes/0a7c2a8d_nohash_0.wav
    root/testing_list.txt       optional: paths (relative to root) of the official test clips

Folders whose name starts with ``_`` or ``.`` (``_background_noise_``) are skipped. Without a
testing list a test split is carved. Each clip is read with ``soundfile`` (mixed down to mono),
resampled with ``librosa`` when its rate differs, and turned into frames by librosa's front end:

* ``features: mfcc`` (default): ``n_mfcc`` MFCCs of a log-mel spectrogram;
* ``features: logmel``: the ``n_mels`` log-mel energies (dB).

``data.options``: sample_rate (16000), features, n_mfcc (13), n_mels (40), win_ms (25),
hop_ms (10), max_seconds (clips are cut to this length; none by default).
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kdcore.config import DataConfig
from kdcore.data.registry import DATASETS, RawData, check_options
from kdcore.errors import DataError

DEFAULTS: dict[str, Any] = {
    "sample_rate": 16000,
    "features": "mfcc",
    "n_mfcc": 13,
    "n_mels": 40,
    "win_ms": 25.0,
    "hop_ms": 10.0,
    "max_seconds": None,
}
FEATURES = ("mfcc", "logmel")
EXTENSIONS = (".wav",)


def frontend_options(given: dict[str, Any]) -> dict[str, Any]:
    opts = {**DEFAULTS, **given}
    if opts["features"] not in FEATURES:
        raise DataError(f"data.options.features must be one of {', '.join(FEATURES)}, got {opts['features']!r}")
    for key in ("sample_rate", "n_mfcc", "n_mels"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"data.options.{key} must be a positive integer, got {v!r}")
    for key in ("win_ms", "hop_ms", "max_seconds"):
        v = opts[key]
        if v is None and key == "max_seconds":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise DataError(f"data.options.{key} must be a positive number, got {v!r}")
    if opts["features"] == "mfcc" and opts["n_mfcc"] > opts["n_mels"]:
        raise DataError(f"data.options.n_mfcc ({opts['n_mfcc']}) cannot exceed n_mels ({opts['n_mels']})")
    return opts


def _librosa():
    try:
        import librosa
    except ImportError:
        raise DataError("dataset audio_folder needs librosa and soundfile: pip install librosa soundfile") from None
    return librosa


def read_wav(path: Path, sample_rate: int, max_seconds: Optional[float] = None) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sample_rate``."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, OSError) as exc:
        raise DataError(f"dataset audio_folder: cannot read {path}: {exc}") from None
    if len(data) == 0:
        raise DataError(f"dataset audio_folder: {path} holds no samples (an empty recording); remove it")
    wave = data.mean(axis=1)
    if rate != sample_rate:
        wave = _librosa().resample(wave, orig_sr=rate, target_sr=sample_rate)
    if max_seconds is not None:
        wave = wave[: int(round(max_seconds * sample_rate))]
    return np.ascontiguousarray(wave, dtype=np.float32)


def audio_features(wave: np.ndarray, options: dict[str, Any]) -> np.ndarray:
    """Frames ``[T, F]`` (float32) of one mono clip: MFCCs or log-mel energies (librosa)."""
    librosa = _librosa()
    opts = frontend_options(options)
    sr = opts["sample_rate"]
    win = max(1, int(round(opts["win_ms"] * sr / 1000)))
    hop = max(1, int(round(opts["hop_ms"] * sr / 1000)))
    n_fft = 1 << (win - 1).bit_length()
    if len(wave) < n_fft:  # a clip shorter than one FFT window still gives one frame
        wave = np.pad(wave, (0, n_fft - len(wave)))
    mel = librosa.feature.melspectrogram(
        y=wave, sr=sr, n_fft=n_fft, hop_length=hop, win_length=win, n_mels=opts["n_mels"], power=2.0
    )
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)
    feats = librosa.feature.mfcc(S=log_mel, n_mfcc=opts["n_mfcc"]) if opts["features"] == "mfcc" else log_mel
    return np.ascontiguousarray(feats.T, dtype=np.float32)


def scan(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not classes:
        raise DataError(
            f"dataset audio_folder: no class folders in {root}: put each class's WAV files in {root}/<label>/*.wav"
        )
    paths, labels = [], []
    for i, folder in enumerate(classes):
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        paths += files
        labels += [i] * len(files)
    if not paths:
        raise DataError(f"dataset audio_folder: no .wav files under {root}")
    return paths, labels, [c.name for c in classes]


def _listed_for_test(root: Path, paths: list[Path]) -> np.ndarray:
    """Which of ``paths`` ``root/testing_list.txt`` names (all False without one). A list that names
    none of the clips, or every one of them, is a mistake and fails naming it."""
    listed = root / "testing_list.txt"
    if not listed.is_file():
        return np.zeros(len(paths), dtype=bool)
    names = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    in_test = {posixpath.normpath(n.replace("\\", "/")).lstrip("/") for n in names}
    is_test = np.array([p.relative_to(root).as_posix() in in_test for p in paths], dtype=bool)
    if names and not is_test.any():
        raise DataError(
            f"dataset audio_folder: {listed} names {len(in_test)} clip(s) but none of the .wav files under "
            f"{root} (first entry {names[0]!r}; entries are paths relative to data.root, e.g. "
            f"{paths[0].relative_to(root).as_posix()!r})"
        )
    if is_test.all():
        raise DataError(
            f"dataset audio_folder: {listed} names every one of the {len(paths)} clips: nothing is left to "
            "train on; list only the test clips"
        )
    return is_test


@DATASETS.register("audio_folder")
def load_audio_folder(cfg: DataConfig) -> RawData:
    check_options(cfg, DEFAULTS)
    opts = frontend_options(cfg.options)
    if not cfg.root:
        raise DataError("dataset audio_folder needs data.root: a folder with one sub-folder of WAV files per class")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset audio_folder: data.root {str(root)!r} is not a folder")
    paths, labels, classes = scan(root)
    is_test = _listed_for_test(root, paths)
    frames = [audio_features(read_wav(p, opts["sample_rate"], opts["max_seconds"]), opts) for p in paths]
    x = np.empty(len(frames), dtype=object)
    x[:] = frames
    y = np.asarray(labels, dtype=np.int64)
    if is_test.any():
        return RawData(
            train_x=x[~is_test],
            train_y=y[~is_test],
            test_x=x[is_test],
            test_y=y[is_test],
            class_names=classes,
            scale=1.0,
            source=str(root),
            modality="speech",
            options=opts,
        )
    return RawData(
        train_x=x, train_y=y, class_names=classes, scale=1.0, source=str(root), modality="speech", options=opts
    )
