"""A stage computes with its own pinned thread count: torch's count is per thread (OpenMP), and a
thread that has not computed yet takes whatever the process set last, so a stage that left the
choice to torch would train with the count another stage (or a library) set meanwhile, and float
sums split over another number of threads give other weights."""

from __future__ import annotations

import copy
import threading

import torch

from conftest import TINY
from kdcore.config import config_from_dict
from kdcore.data import load_dataset
from kdcore.stages import StageEnv


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_a_stage_keeps_its_thread_count_whatever_another_thread_set(tmp_path):
    cfg = config_from_dict(copy.deepcopy(TINY))  # trainer.num_threads unset
    data = load_dataset(cfg.data)
    expected = torch.get_num_threads()  # the process's count (torch's default, or what conftest chose)
    other = 1 if expected > 1 else 2
    _in_thread(lambda: torch.set_num_threads(other))  # another stage, beside, with its own setting

    def stage() -> int:
        StageEnv(cfg, data, tmp_path / "w")
        return torch.get_num_threads()

    assert _in_thread(stage) == expected


def test_a_configured_count_is_pinned_in_the_stage_s_thread(tmp_path):
    cfg = config_from_dict(copy.deepcopy(TINY), ["trainer.num_threads=3"])
    data = load_dataset(cfg.data)
    before = torch.get_num_threads()

    def stage() -> int:
        StageEnv(cfg, data, tmp_path / "w")
        return torch.get_num_threads()

    assert _in_thread(stage) == 3
    assert torch.get_num_threads() == before, "the calling thread's count is its own"
    assert torch.are_deterministic_algorithms_enabled()  # trainer.deterministic (the default)
