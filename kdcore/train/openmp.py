"""Idle OpenMP thread pools, handed back so that they do not slow down the thread that trains.

Every thread that runs a parallel torch op on the CPU gets an OpenMP pool of its own (its intra-op
threads minus one workers), kept for as long as the thread lives. libgomp counts the workers of all
pools; once the process holds more of them than the machine has cores, every pool's threads stop
spinning at a barrier after a hundred rounds and sleep on a futex instead, and each wake-up then
costs the training loop time. On the 2-core machine a stage trained in a worker thread (as Prefect
runs tasks) at 0.78x the speed of the same loop in the main thread, only because the main thread's
pool, left over from loading the data, sat idle beside it (bench/README.md "bare_loop.py").

``omp_pause_resource_all`` (OpenMP 5.0) ends the calling thread's pool; its next parallel op starts
a new one with the same thread count, so nothing computed changes. Only GNU libgomp (torch's Linux
wheels) is handled: there the call ends the calling thread's pool and no other. LLVM's and Intel's
runtimes pause every thread of the runtime on that call, which must not happen while another
thread trains, and they spin by a time limit rather than by a count of pool workers. Where libgomp
is not found (no ``/proc``, another runtime) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import re
from pathlib import Path
from typing import Callable

_OMP_PAUSE_SOFT = 1  # omp_pause_resource_t: soft pause, the threads end and the runtime stays usable
_RUNTIME = re.compile(r"/libgomp[^/]*\.so[.0-9]*$")  # GNU's, e.g. torch/lib/libgomp.so.1


@functools.cache
def _pause_calls() -> tuple[Callable[[int], int], ...]:
    """``omp_pause_resource_all`` of every libgomp loaded: torch's and any other library's own copy
    (scikit-learn's wheels bring a libgomp of their own, each copy with its own pools)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ()
    calls = []
    for path in sorted({line.split()[-1] for line in maps.splitlines() if _RUNTIME.search(line)}):
        try:
            fn = ctypes.CDLL(path).omp_pause_resource_all  # the copy already loaded: the same runtime
        except (OSError, AttributeError):
            continue
        fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
        calls.append(fn)
    return tuple(calls)


def release_thread_pool() -> bool:
    """End the calling thread's idle OpenMP pools (if any); True when every libgomp found took the call.

    The runtimes are looked up on the first call, so call it after torch is imported."""
    calls = _pause_calls()
    return bool(calls) and all([pause(_OMP_PAUSE_SOFT) == 0 for pause in calls])
