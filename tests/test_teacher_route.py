"""bench/teacher_route.py: a route is parsed and checked, and the student reads each anchor's cached
outputs from the epoch the route names."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("teacher_route", ROOT / "bench" / "teacher_route.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["teacher_route"] = module
    spec.loader.exec_module(module)
    return module


def test_a_route_is_parsed_in_order():
    assert _script().parse_route(["5@0", "10@3", "19@8"]) == [(5, 0), (10, 3), (19, 8)]


@pytest.mark.parametrize(
    "items, message",
    [
        (["5-0"], "is not TEACHER_EPOCH@STUDENT_EPOCH"),
        (["5@1"], "must start at 0 and rise"),
        (["5@0", "10@4", "13@2"], "must start at 0 and rise"),
        (["20@0"], "teacher epochs are 0..19"),
        (["5@0", "19@10"], "the student trains epochs 0..9"),
    ],
)
def test_a_bad_route_is_refused_with_a_message(items, message):
    with pytest.raises(SystemExit, match=message):
        _script().parse_route(items)


def test_the_source_follows_the_route_epoch_by_epoch():
    source = SimpleNamespace(entries=None)
    callbacks = _script().follow_route(source, [(0, "early"), (3, "middle"), (6, "final")])
    seen = []
    for epoch in range(8):
        callbacks.on_epoch_start(epoch)
        seen.append(source.entries)
    assert seen == ["early"] * 3 + ["middle"] * 3 + ["final"] * 2
