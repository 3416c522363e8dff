"""``image_csv``: a CSV of path,label rows, paths relative to the CSV; bad lists fail with one message."""

from __future__ import annotations

import pytest
import torch
from images import write_image_folder

from kdcore.config import DataConfig
from kdcore.data import load_dataset
from kdcore.errors import DataError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("csv") / "photos", per_class=12, size=16)


def write_csv(path, rows, header="path,label"):
    path.write_text(header + "\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def listing(folder, names=True):
    return [
        (f"photos/{f.parent.name}/{f.name}", f.parent.name if names else int(f.parent.name[1:]))
        for f in sorted(folder.rglob("*.png"))
    ]


def test_image_csv_with_names_or_ints_matches_imagefolder(folder):
    by_folder = load_dataset(DataConfig(name="imagefolder", root=str(folder)))
    for names in (True, False):
        csv = write_csv(folder.parent / f"list-{names}.csv", listing(folder, names))
        b = load_dataset(DataConfig(name="image_csv", root=str(csv)))
        assert b.num_classes == 3 and b.input_shape == (3, 16, 16)
        assert b.class_names == (["c0", "c1", "c2"] if names else ["0", "1", "2"])
        assert torch.equal(b.train.x, by_folder.train.x) and torch.equal(b.test.y, by_folder.test.y)


def test_image_csv_streams(folder):
    csv = write_csv(folder.parent / "stream.csv", listing(folder))
    b = load_dataset(DataConfig(name="image_csv", root=str(csv), in_memory=False, num_workers=0))
    mem = load_dataset(DataConfig(name="image_csv", root=str(csv)))
    assert torch.equal(b.test.x[:], mem.test.x) and b.extras["streaming"]


def test_official_test_csv(folder):
    rows = listing(folder)
    train = write_csv(folder.parent / "train.csv", rows[::2])
    test = write_csv(folder.parent / "test.csv", rows[1::2])
    b = load_dataset(DataConfig(name="image_csv", root=str(train), options={"test": str(test)}))
    assert len(b.test) == len(rows[1::2])


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_file", r"row 3 names .*nope\.png, which does not exist$"),
        ("unknown_column", r"unknown column\(s\) weight \(the columns are exactly: path,label\)$"),
        ("missing_column", r"missing column\(s\) label"),
        ("no_csv", r"image list .*absent\.csv does not exist$"),
        ("unknown_label", r"labels c9 are not among the train classes"),
    ],
)
def test_bad_csv_fails_with_one_clear_message(folder, case, message):
    rows = listing(folder)
    csv = folder.parent / f"{case}.csv"
    options = {}
    if case == "missing_file":
        write_csv(csv, [rows[0], ("photos/c0/nope.png", "c0"), *rows[1:]])
    elif case == "unknown_column":
        csv.write_text("path,label,weight\n" + "".join(f"{p},{label},1\n" for p, label in rows))
    elif case == "missing_column":
        csv.write_text("path\n" + "".join(f"{p}\n" for p, _ in rows))
    elif case == "no_csv":
        csv = folder.parent / "absent.csv"
    elif case == "unknown_label":
        write_csv(csv, rows)
        test = write_csv(folder.parent / "test-bad.csv", [(rows[0][0], "c9")])
        options = {"test": str(test)}
    with pytest.raises(DataError, match=message) as info:
        load_dataset(DataConfig(name="image_csv", root=str(csv), options=options))
    assert "\n" not in str(info.value)
