"""Task `evaluate`: teacher, baseline and distilled student on the test split."""

import json

from kdcore.evaluate import comparison_table
from kdcore.evaluate.verdict import Fit, distillation_verdict
from kdcore.stages import evaluate_models
from kdcore.train.checkpoint import load_model
from tasks.stage import StageCall

MODELS = ("teacher", "baseline", "distill")
LABELS = {"teacher": "teacher", "baseline": "baseline", "distill": "student"}


def body(call: StageCall) -> dict:
    models = {
        LABELS[s]: load_model(call.inputs[s].required("path")).to(call.env.device) for s in MODELS if s in call.inputs
    }
    results = call.timed(evaluate_models, call.env, models)
    metrics = {name: r["metrics"] for name, r in results.items()}
    table = comparison_table(metrics)
    out = call.env.workdir / "comparison.csv"
    table.to_csv(out)
    (call.env.workdir / "per_sample_correct.json").write_text(
        json.dumps({name: r["correct"] for name, r in results.items()})
    )
    call.tracker.log_artifact(call.run_id, out)
    call.tracker.log_artifact(call.run_id, call.env.workdir / "per_sample_correct.json")
    call.tracker.log_text(call.run_id, table.to_html(float_format="%.4g"), "comparison.html")
    flat = {f"{name}.{k}": float(v) for name, m in metrics.items() for k, v in m.items()}
    info: dict = {"models": metrics}
    if "student" in metrics and "baseline" in metrics:
        flat["student_gain_top1"] = metrics["student"]["top1"] - metrics["baseline"]["top1"]
        student = metrics["student"]
        fit = None
        if "train_agreement" in student and "agreement" in student:
            n_fit = min(call.cfg.evaluate.fit_samples, len(call.env.data.train))
            fit = Fit(student["train_agreement"], student["agreement"], n_fit, len(call.env.data.test))
        verdict = distillation_verdict(
            results["student"]["correct"], results["baseline"]["correct"], cfg=call.cfg, fit=fit
        )
        info["verdict"] = verdict.as_dict()  # did distillation pay? (register tags / withholds on it)
        flat["student_gain_margin"] = verdict.margin
        call.tracker.set_tags(
            call.run_id, {"kdflow.distillation_pays": verdict.pays, "kdflow.verdict": verdict.message}
        )
    return {"path": str(out), "metrics": flat, "info": info}
