"""Whether a task tag has a Prefect concurrency limit, so that a task carries the tag only when it must.

Training stages carry the ``gpu`` tag so that a ``gpu`` task concurrency limit (``kdflow deploy``
creates one) bounds how many train at once on a work pool. A tagged task asks the server for a slot
before it runs and hands it back after, a database write each; on Prefect's SQLite store those writes
race with the flow's other writes as tasks start together, and a losing request is answered 503 and
retried by the client after a 2 s back-off (measured: 2.0-2.4 s before the teacher and the baseline
started in every default run). Without a limit on the tag the slot request does nothing, so a run
whose server has no limit on a tag submits its tasks without it. The answer is kept for a minute per
API, so a limit created meanwhile applies from the next minute's runs.
"""

from __future__ import annotations

import threading
import time
from typing import Iterable, Optional

TTL_SECONDS = 60.0
_CACHE: dict[tuple[Optional[str], str], tuple[float, bool]] = {}
_LOCK = threading.Lock()


def _api_url() -> Optional[str]:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _has_limit(tag: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_concurrency_limit_by_tag(tag)
    except ObjectNotFound:
        return False
    return True


def limited(tag: str) -> bool:
    """Whether the Prefect server this process talks to has a concurrency limit on ``tag``; when the
    server cannot say, true (the tag stays and Prefect's own handling applies)."""
    key = (_api_url(), tag)
    now = time.monotonic()
    with _LOCK:
        hit = _CACHE.get(key)
        if hit and now - hit[0] < TTL_SECONDS:
            return hit[1]
    try:
        answer = _has_limit(tag)
    except Exception:  # noqa: BLE001 - an unreachable or older server: keep the tag
        answer = True
    with _LOCK:
        _CACHE[key] = (now, answer)
    return answer


def needed(tags: Iterable[str]) -> set[str]:
    """The tags among ``tags`` that have a concurrency limit."""
    return {t for t in tags if limited(t)}


def forget() -> None:
    """Drop the remembered answers (a limit was just created or deleted)."""
    with _LOCK:
        _CACHE.clear()
