"""Task `features`: build or reuse the teacher's cache entry."""
import time

from kdcore.stages import build_features
from kdcore.train.checkpoint import load_model
from tasks.home import cache_dir
from tasks.stage import StageCall, stage_task


def _features(call: StageCall) -> dict:
    teacher = call.inputs["teacher"]
    model = load_model(teacher.path).to(call.env.device)
    t0 = time.perf_counter()
    entry, built = call.timed(build_features, call.env, model, teacher.sha256, cache_dir(call.home))
    size = sum(f["bytes"] for f in entry.manifest["files"].values())
    call.tracker.log_text(call.run_id, (entry.root / "manifest.json").read_text(), "cache_manifest.json")
    return {"path": str(entry.root), "sha256": entry.key,
            "metrics": {"cache_bytes": size, "build_seconds": time.perf_counter() - t0, "built": float(built)},
            "info": {"key": entry.key, "paths": entry.manifest["paths"], "built": built}}


features_task = stage_task("features", _features)
