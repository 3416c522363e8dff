"""Task `register`: teacher and distilled student become versions in the MLflow model registry."""
from tasks.stage import StageCall


def body(call: StageCall) -> dict:
    cfg = call.cfg.register
    if not cfg.enabled:
        return {"info": {"registered": {}}, "metrics": {"registered_versions": 0}}
    teacher, student, ev = call.inputs["teacher"], call.inputs["distill"], call.inputs["evaluate"]
    lineage = {"kdflow.data_fingerprint": call.data.fingerprint, "kdflow.config_hash": call.cfg.config_hash(),
               "kdflow.pipeline_run_id": call.parent_run_id}
    t_version, t_new = call.tracker.register(teacher.model_uri, cfg.teacher_name, {
        **lineage, "kdflow.stage": "teacher", "kdflow.fingerprint": teacher.fingerprint,
        "kdflow.weights_sha256": teacher.sha256, "test_top1": ev.metrics.get("teacher.top1", "")})
    s_version, s_new = call.tracker.register(student.model_uri, cfg.student_name, {
        **lineage, "kdflow.stage": "distill", "kdflow.fingerprint": student.fingerprint,
        "kdflow.weights_sha256": student.sha256, "kdflow.teacher_model": f"{cfg.teacher_name}/{t_version}",
        "test_top1": ev.metrics.get("student.top1", ""), "baseline_top1": ev.metrics.get("baseline.top1", ""),
        "kdflow.beats_baseline": ev.metrics.get("student_gain_top1", 0.0) > 0})
    registered = {cfg.teacher_name: t_version, cfg.student_name: s_version}
    call.tracker.set_tags(call.run_id, {f"registered.{k}": v for k, v in registered.items()})
    created = [n for n, new in ((cfg.teacher_name, t_new), (cfg.student_name, s_new)) if new]
    return {"info": {"registered": registered, "created": created},
            "metrics": {"registered_versions": 2, "new_versions": len(created)}}
