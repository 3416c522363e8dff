"""Task `teacher`: train (or load) the teacher and log it to MLflow."""

from kdcore.stages import train_teacher
from tasks.records import record_fields
from tasks.stage import StageCall


def body(call: StageCall) -> dict:
    res = call.timed(train_teacher, call.env)
    uri = call.tracker.log_torch_model(call.run_id, res.model, call.data.test.x[:2], extra_files=res.files)
    call.tracker.log_artifact(call.run_id, res.path, "weights")
    call.tracker.log_artifact(call.run_id, res.path.with_name(res.path.name + ".json"), "weights")
    for extra in res.files:
        call.tracker.log_artifact(call.run_id, extra, "weights")
    return record_fields(res, model_uri=uri)
