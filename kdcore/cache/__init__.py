"""Teacher output cache (logits and intermediate features, content-addressed)."""
from kdcore.cache.store import CacheEntry, CacheError, build_entry, cache_key, open_entry

__all__ = ["CacheEntry", "CacheError", "build_entry", "cache_key", "open_entry"]
