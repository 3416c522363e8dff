"""Task `pretrain`: the student's initialisation (hint training or teacher layers)."""
from kdcore.cache import open_entry
from kdcore.stages import TeacherSource, pretrain_student
from kdcore.train.checkpoint import load_model
from tasks.home import cache_dir
from tasks.stage import StageCall, stage_task


def _pretrain(call: StageCall) -> dict:
    method = call.cfg.pretrain.method
    source = teacher = None
    if method == "hint":
        entry = open_entry(cache_dir(call.home), call.inputs["features"].info["key"])
        paths = [p.teacher for p in call.cfg.pretrain.pairs]
        source = TeacherSource(call.env, entry, None, paths)
    elif method == "teacher_layers":
        teacher = load_model(call.inputs["teacher"].path)
    res = call.timed(pretrain_student, call.env, source, teacher)
    return {"path": str(res.path), "sha256": res.sha256, "metrics": res.metrics, "info": res.info}


pretrain_task = stage_task("pretrain", _pretrain)
