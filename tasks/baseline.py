"""Task `baseline`: the same student trained with cross-entropy alone."""

from kdcore.stages import train_baseline
from tasks.records import record_fields
from tasks.stage import StageCall


def body(call: StageCall) -> dict:
    res = call.timed(train_baseline, call.env)
    uri = call.tracker.log_torch_model(call.run_id, res.model, call.data.test.x[:2], extra_files=res.files)
    return record_fields(res, model_uri=uri)
