"""bench/thread_cpu.py's sampler attributes CPU time to the thread that used it, by name, also
once that thread has ended."""

from __future__ import annotations

import sys
import threading
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")


def test_the_sampler_finds_the_busy_thread_by_name():
    from bench.thread_cpu import Sampler

    sampler = Sampler(0.02)
    sampled = threading.Event()

    def burn() -> None:
        end = time.thread_time() + 0.6
        while time.thread_time() < end:  # 0.6 s of this thread's own CPU time
            pass
        sampled.wait(30)  # alive and idle until the sampler has seen all of it; then it ends

    sampler.start()
    time.sleep(0.1)
    t0 = time.time()
    busy = threading.Thread(target=burn, name="burner")
    busy.start()
    deadline = time.time() + 30
    # /proc counts CPU time in clock ticks (0.01 s): 0.55 is all of the 0.6 s, give or take a few
    while time.time() < deadline and sampler.samples[-1][1].get(busy.native_id, 0.0) < 0.55:
        time.sleep(0.02)
    sampled.set()
    busy.join()
    time.sleep(0.1)  # a few samples after the thread ended
    t1 = time.time()
    sampler.stopped.set()
    sampler.join()
    used = sampler.window(t0, t1)
    assert sampler.names[busy.native_id] == "burner"
    assert 0.55 <= used[busy.native_id] < 1.0, used
    assert used.get(threading.main_thread().native_id, 0.0) < 0.3, used  # the main thread mostly slept
