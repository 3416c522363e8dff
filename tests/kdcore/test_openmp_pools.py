"""An idle thread's OpenMP pool is handed back (kdcore/train/openmp.py): its worker threads end,
the next parallel op starts a new pool, and what is computed does not change. The speed it buys is
bench/bare_loop.py's (never asserted here)."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from kdcore.train.openmp import release_thread_pool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _parallel_sum(x: torch.Tensor) -> torch.Tensor:
    return (x * 1.000001).sum(dim=1)  # large enough for torch to split it over the intra-op threads


def _runtimes() -> set[str]:
    return {line.split()[-1] for line in open("/proc/self/maps") if "omp" in line and ".so" in line}


def test_releasing_ends_the_calling_threads_workers_and_changes_no_result():
    import sklearn.utils._openmp_helpers  # noqa: F401  # scikit-learn's own libgomp, loaded as in a pipeline run

    assert any("torch" in r for r in _runtimes()) and any("scikit" in r for r in _runtimes()), _runtimes()
    seen: dict[str, object] = {}

    def body() -> None:
        torch.set_num_threads(2)  # this thread's own count; restored below for the next threads
        x = torch.randn(4096, 2048, generator=torch.Generator().manual_seed(0))
        first = _parallel_sum(x)
        with_pool = _threads()
        seen["released"] = release_thread_pool()
        seen["dropped"] = with_pool - _threads()
        again = _parallel_sum(x)
        seen["restarted"] = _threads() - with_pool
        seen["same"] = torch.equal(first, again)

    before = torch.get_num_threads()
    t = threading.Thread(target=body)
    t.start()
    t.join()
    torch.set_num_threads(before)
    assert seen["released"] is True, "torch's OpenMP runtime was not found in /proc/self/maps"
    assert seen["dropped"] == 1, "the pool's worker thread (2 threads: the caller and one worker) did not end"
    assert seen["restarted"] == 0, "the next parallel op did not start a pool of the same size"
    assert seen["same"] is True


def test_a_thread_without_a_pool_can_release_too():
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(release_thread_pool()))
    t.start()
    t.join()
    assert out == [True]
