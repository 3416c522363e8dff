"""Opening the cache entries a `features` record points to."""
from kdcore.cache import CacheEntry, open_entry
from tasks.home import cache_dir
from tasks.stage import StageCall


def open_entries(call: StageCall) -> dict[str, CacheEntry]:
    keys = call.inputs["features"].info["keys"]
    checksums = call.cfg.cache.verify == "sha256"
    return {split: open_entry(cache_dir(call.home), key, checksums=checksums) for split, key in keys.items()}
