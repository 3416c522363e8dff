"""Teacher output cache (logits and intermediate features per view, content-addressed)."""

from kdcore.cache.store import (
    CacheEntry,
    CacheError,
    build_entry,
    cache_key,
    find_covering,
    gc,
    key_fields,
    list_entries,
    open_entry,
)

__all__ = [
    "CacheEntry",
    "CacheError",
    "build_entry",
    "cache_key",
    "find_covering",
    "gc",
    "key_fields",
    "list_entries",
    "open_entry",
]
