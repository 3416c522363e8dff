"""Task `features`: build or reuse the teacher's cache entries (train views and val)."""

import time

from kdcore.stages import build_features
from kdcore.train.checkpoint import load_model
from tasks.home import cache_dir
from tasks.stage import StageCall


def body(call: StageCall) -> dict:
    teacher = call.inputs["teacher"]
    model = load_model(teacher.required("path")).to(call.env.device)
    t0 = time.perf_counter()
    entries = call.timed(build_features, call.env, model, teacher.sha256, cache_dir(call.home))
    seconds = time.perf_counter() - t0
    for split, (entry, _) in entries.items():
        call.tracker.log_text(call.run_id, (entry.root / "manifest.json").read_text(), f"cache_{split}_manifest.json")
    size = sum(e.size_bytes() for e, _ in entries.values())
    built = {split: b for split, (_, b) in entries.items()}
    return {
        "path": str(entries["train"][0].root),
        "sha256": entries["train"][0].key,
        "metrics": {"cache_bytes": size, "build_seconds": seconds, "entries_built": sum(built.values())},
        "info": {
            "keys": {split: e.key for split, (e, _) in entries.items()},
            "built": built,
            "paths": entries["train"][0].paths,
            "num_views": entries["train"][0].num_views,
        },
    }
