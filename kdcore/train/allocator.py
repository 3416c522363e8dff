"""glibc's heap, kept between training steps instead of handed back to the kernel after each one.

A CPU training step allocates its activations and gradients (megabytes each) and frees them all
before the next step. glibc's malloc starts with a 128 KiB mmap threshold and raises it, with the
trim threshold at twice that, each time a large mmapped block is freed; a thread other than the
main one (a Prefect task's) allocates from 64 MiB heaps of its own, and glibc unmaps such a heap
as soon as it empties. Either way a step's freed memory goes back to the kernel and the next step
faults it in again page by page: issue 12's run took 10.9 million minor page faults, resnet14's
step about 6,400 per step of batch 128 in a worker thread (bench/allocator.py).

:func:`keep_heap` sets three of malloc's parameters once per process (``mallopt``): blocks up to
``MMAP_THRESHOLD`` come from the heap, up to ``TRIM_THRESHOLD`` of free heap is kept, and
``TOP_PAD`` keeps a thread's emptied heaps mapped. The step above then takes about 60 faults and
ran 1.11x as fast (the 9k student's 1.03x). Nothing computed changes, only where the bytes live.
The price is memory: the process keeps what its largest step used, as PyTorch's CUDA caching
allocator does on a GPU (resnet14's process with a validation pass peaked at 1,564 MB against
1,429 MB). It does nothing

- where the C library is not glibc (macOS, Windows, musl),
- where the user chose glibc's malloc settings (``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_``, or ``glibc.malloc``
  tunables in ``GLIBC_TUNABLES``),
- where ``KDFLOW_ALLOCATOR=system`` asks for the C library's defaults.

A process that forks DataLoader workers hands the kept memory back first (:func:`trim_heap`, called
by ``kdcore.train.batches`` where workers fork): a forked worker starts with its parent's heap, and
one that inherits hundreds of MB of free heap writes into it and gets private copies of those pages
(bench/scale.py, the evaluate stage: 85-152 MB of private memory per worker before, 34-37 MB after,
28-35 MB with glibc's defaults).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from typing import Optional

ENV = "KDFLOW_ALLOCATOR"
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): larger blocks mmap
TRIM_THRESHOLD = 64 << 20  # free heap at the top kept (beside TOP_PAD) before any is handed back
TOP_PAD = 64 << 20  # a thread's 64 MiB heaps: never unmapped while a step may want them again
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameter numbers (malloc.h)
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

_lock = threading.Lock()
_state: Optional[str] = None
_libc: Optional[ctypes.CDLL] = None  # set where the heap is kept


def _users_choice() -> Optional[str]:
    """Why the C library's own settings stay (the user asked for them), or None."""
    if os.environ.get(ENV, "").strip().lower() == "system":
        return f"{ENV}=system"
    for name in _GLIBC_ENV:
        if name in os.environ:
            return f"{name} is set"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets glibc.malloc"
    return None


def keep_heap() -> str:
    """Set glibc's mmap threshold, trim threshold and top pad for this process (the first call does
    it; later calls return the first one's outcome): ``"kept"``, or why the C library's settings stay."""
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def _apply() -> str:
    reason = _users_choice()
    if reason:
        return f"system: {reason}"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system: not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "system: mallopt not found"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))
    if not all([mallopt(param, value) == 1 for param, value in settings]):
        return "system: mallopt refused a setting"  # those before it stay set: harmless, each alone helps
    global _libc
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    _libc = libc
    return "kept"


def trim_heap() -> bool:
    """Hand the free memory of every malloc arena back to the kernel now (glibc's ``malloc_trim``),
    if :func:`keep_heap` kept it; True when it did. The next steps fault their memory in once more."""
    with _lock:
        libc = _libc if _state == "kept" else None
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
