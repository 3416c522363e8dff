"""Task `pretrain`: the student's initialisation (hint training or teacher layers)."""

from kdcore.losses import build_objective
from kdcore.stages import TeacherSource, pretrain_student
from kdcore.stages.distill import pretrain_objective_spec
from kdcore.train.checkpoint import load_model
from tasks.cache_entries import open_entries
from tasks.records import record_fields
from tasks.stage import StageCall


def body(call: StageCall) -> dict:
    method = call.cfg.pretrain.method
    source = teacher = None
    if method == "hint":
        paths = [p.teacher for p in call.cfg.pretrain.pairs]
        source = TeacherSource(call.env, open_entries(call), None, paths)
    elif method == "teacher_layers":  # new / reshaped layers train on the teacher's outputs
        teacher = load_model(call.inputs["teacher"].required("path"))
        paths = build_objective(pretrain_objective_spec(call.cfg)).teacher_paths
        if call.cfg.cache.mode == "cached":
            source = TeacherSource(call.env, open_entries(call), None, paths)
    res = call.timed(pretrain_student, call.env, source, teacher)
    return record_fields(res)
