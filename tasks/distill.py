"""Task `distill`: KD (+ feature terms) from the cached teacher outputs, or online."""

from kdcore.losses import build_objective
from kdcore.stages import TeacherSource, distill_student
from kdcore.train.checkpoint import load_model
from tasks.cache_entries import open_entries
from tasks.records import record_fields
from tasks.stage import StageCall


def body(call: StageCall) -> dict:
    paths = build_objective(call.cfg.distill.objective_spec()).teacher_paths
    if call.cfg.cache.mode == "cached":
        source = TeacherSource(call.env, open_entries(call), None, paths)
    else:
        teacher = load_model(call.inputs["teacher"].required("path")).to(call.env.device)
        source = TeacherSource(call.env, None, teacher, paths)
    res = call.timed(distill_student, call.env, call.inputs["pretrain"].path, source)
    uri = call.tracker.log_torch_model(call.run_id, res.model, call.data.test.x[:2], extra_files=res.files)
    call.tracker.log_artifact(call.run_id, res.path, "weights")
    return record_fields(res, model_uri=uri)
