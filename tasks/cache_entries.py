"""The cache entries a `features` record points to: opening them, and checking they are still there."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kdcore.cache import CacheEntry, CacheError, open_entry
from tasks.home import cache_dir
from tasks.records import StageRecord

if TYPE_CHECKING:
    from tasks.stage import StageCall

REBUILD_HINT = (
    "run the same `kdflow run` again: the features stage rebuilds missing or damaged entries "
    "(`kdflow cache verify` lists damaged ones)"
)


def open_entries(call: "StageCall") -> dict[str, CacheEntry]:
    keys = call.inputs["features"].info["keys"]
    checksums = call.cfg.cache.verify == "sha256"
    try:
        return {split: open_entry(cache_dir(call.home), key, checksums=checksums) for split, key in keys.items()}
    except CacheError as exc:  # removed or damaged since the features stage ran
        raise CacheError(f"{exc}; {REBUILD_HINT}") from None


def entries_intact(record: StageRecord, home: Path) -> bool:
    """Every cache entry of a `features` record exists and passes the size check (a cached record
    whose entries were garbage-collected or damaged is computed again)."""
    try:
        for key in record.info.get("keys", {}).values():
            open_entry(cache_dir(home), key)
    except CacheError:
        return False
    return record.artifact_ok()
