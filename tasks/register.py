"""Task `register`: teacher and distilled student become versions in the MLflow model registry.

Every version carries its lineage (data fingerprint, config hash, pipeline run, seed), the code
that made it (``tasks.provenance.code_tags``) and, for the student, whether distillation paid
(``kdflow.beats_baseline`` and the margin, from the evaluate stage's verdict). The student's first
version becomes the ``champion``. With ``register.require_gain: true``, a student that does not
beat its baseline is not registered at all."""

from prefect import get_run_logger

from kdcore.evaluate.promotion_rules import CHAMPION, SEED_TAG
from tasks.provenance import code_tags
from tasks.stage import StageCall


def _verdict_tags(verdict: dict | None, gain: float) -> dict:
    if verdict is None:  # no baseline to compare with
        return {"kdflow.beats_baseline": gain > 0}
    return {
        "kdflow.beats_baseline": verdict["pays"],
        "kdflow.gain_top1": f"{verdict['gain']:.6f}",
        "kdflow.gain_margin": f"{verdict['margin']:.6f}",
        "kdflow.gain_p_value": f"{verdict['p_value']:.6g}",
    }


def body(call: StageCall) -> dict:
    cfg = call.cfg.register
    if not cfg.enabled:
        return {"info": {"registered": {}}, "metrics": {"registered_versions": 0}}
    teacher, student, ev = call.inputs["teacher"], call.inputs["distill"], call.inputs["evaluate"]
    verdict = ev.info.get("verdict")
    if cfg.require_gain and verdict is not None and not verdict["pays"]:
        message = f"registration withheld (register.require_gain: true): {verdict['message']}. {verdict['advice']}"
        get_run_logger().warning(message)
        call.tracker.set_tags(call.run_id, {"kdflow.withheld": message})
        return {
            "info": {"registered": {}, "created": [], "withheld": message},
            "metrics": {"registered_versions": 0, "new_versions": 0},
        }
    lineage = {
        "kdflow.data_fingerprint": call.data.fingerprint,
        "kdflow.config_hash": call.cfg.config_hash(),
        "kdflow.pipeline_run_id": call.parent_run_id,
        SEED_TAG: call.cfg.trainer.seed,
        **code_tags(),
    }
    t_version, t_new = call.tracker.register(
        teacher.required("model_uri"),
        cfg.teacher_name,
        {
            **lineage,
            "kdflow.stage": "teacher",
            "kdflow.fingerprint": teacher.fingerprint,
            "kdflow.weights_sha256": teacher.sha256,
            "test_top1": ev.metrics.get("teacher.top1", ""),
        },
    )
    s_version, s_new = call.tracker.register(
        student.required("model_uri"),
        cfg.student_name,
        {
            **lineage,
            "kdflow.stage": "distill",
            "kdflow.fingerprint": student.fingerprint,
            "kdflow.weights_sha256": student.sha256,
            "kdflow.teacher_model": f"{cfg.teacher_name}/{t_version}",
            "test_top1": ev.metrics.get("student.top1", ""),
            "baseline_top1": ev.metrics.get("baseline.top1", ""),
            **_verdict_tags(verdict, ev.metrics.get("student_gain_top1", 0.0)),
        },
    )
    if call.tracker.version_by_alias(cfg.student_name, CHAMPION) is None:
        # the first student of this name serves until a retrain promotes a better one
        call.tracker.set_alias(cfg.student_name, CHAMPION, s_version)
    registered = {cfg.teacher_name: t_version, cfg.student_name: s_version}
    call.tracker.set_tags(call.run_id, {f"registered.{k}": v for k, v in registered.items()})
    created = [n for n, new in ((cfg.teacher_name, t_new), (cfg.student_name, s_new)) if new]
    return {
        "info": {"registered": registered, "created": created},
        "metrics": {"registered_versions": 2, "new_versions": len(created)},
    }
