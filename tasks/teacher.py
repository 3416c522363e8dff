"""Task `teacher`: train (or load) the teacher and log it to MLflow."""
from kdcore.stages import train_teacher
from tasks.stage import StageCall, stage_task


def _teacher(call: StageCall) -> dict:
    res = call.timed(train_teacher, call.env)
    uri = call.tracker.log_torch_model(call.run_id, res.model, call.data.test.x[:2], extra_files=res.files)
    call.tracker.log_artifact(call.run_id, res.path, "weights")
    call.tracker.log_artifact(call.run_id, res.path.with_name(res.path.name + ".json"), "weights")
    for extra in res.files:
        call.tracker.log_artifact(call.run_id, extra, "weights")
    return {"path": str(res.path), "sha256": res.sha256, "metrics": res.metrics, "info": res.info, "model_uri": uri}


teacher_task = stage_task("teacher", _teacher)
