"""Which cached things to remove: the retention rule shared by the teacher cache's ``gc`` and the
decoded image stores' ``remove_stores``."""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence, TypeVar

T = TypeVar("T")


def to_remove(
    items: Sequence[T],
    last_used: Callable[[T], float],
    size: Callable[[T], int],
    keep_days: Optional[float] = None,
    max_size: Optional[int] = None,
) -> list[T]:
    """Those unused for more than ``keep_days``, then the least recently used of the rest until what
    stays holds at most ``max_size`` bytes; in the order they were chosen."""
    now = time.time()
    removed: list[T] = []
    keep: list[T] = []
    for item in sorted(items, key=last_used):  # the least recently used first
        (removed if keep_days is not None and now - last_used(item) > keep_days * 86400 else keep).append(item)
    if max_size is not None:
        total = sum(size(i) for i in keep)
        while keep and total > max_size:
            item = keep.pop(0)
            total -= size(item)
            removed.append(item)
    return removed
