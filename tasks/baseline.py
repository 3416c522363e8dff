"""Task `baseline`: the same student trained with cross-entropy alone."""
from kdcore.stages import train_baseline
from tasks.stage import StageCall, stage_task


def _baseline(call: StageCall) -> dict:
    res = call.timed(train_baseline, call.env)
    uri = call.tracker.log_torch_model(call.run_id, res.model, call.data.test.x[:2], extra_files=res.files)
    return {"path": str(res.path), "sha256": res.sha256, "metrics": res.metrics, "info": res.info, "model_uri": uri}


baseline_task = stage_task("baseline", _baseline)
