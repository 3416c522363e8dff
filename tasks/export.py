"""Stage `export`: the registered student as TorchScript, with an output parity check.

A stage like the others (declared in tasks/spec.py): fingerprinted from the ``export`` config and
the distill and register records, skipped on an unchanged rerun while its file exists. The file
lies in the stage's work directory and also goes into the distill run that produced the registered
version (``export/``), its largest difference from the PyTorch model is logged there as
``export_max_abs_diff``, and the model version is tagged with where the export is
(``kdflow.export_uri``), so a version can be served and evaluated without unpickling Python objects.
"""

from __future__ import annotations

from typing import Any

from kdcore.config import PipelineConfig
from kdcore.export import export_torchscript
from kdcore.fingerprint import file_sha256
from kdcore.train.checkpoint import load_model
from tasks.stage import StageCall

EXPORT_NAME = "student.torchscript.pt"
PARITY_SAMPLES = 512


def enabled(cfg: PipelineConfig) -> bool:
    """Export the registered student (a format is configured and registration is on)."""
    return cfg.export.format != "none" and cfg.register.enabled


def body(call: StageCall) -> dict[str, Any]:
    """Export the distilled student of the ``distill`` record; tag its registered version."""
    config = call.cfg
    distill, register = call.inputs["distill"], call.inputs["register"]
    version = register.info.get("registered", {}).get(config.register.student_name)
    model = load_model(distill.required("path"))
    out = call.env.workdir / EXPORT_NAME
    result = call.timed_alone(export_torchscript, model, call.data.test.x[:PARITY_SAMPLES], out, config.export.atol)
    run_id = distill.required("mlflow_run_id")
    call.tracker.log_artifact(run_id, result.path, "export")
    call.tracker.log_metrics(run_id, {"export_max_abs_diff": result.max_abs_diff})
    call.tracker.set_tags(run_id, {"kdflow.export_method": result.method})
    uri = f"runs:/{run_id}/export/{EXPORT_NAME}"
    if version is not None:
        tags = {
            "kdflow.export_format": config.export.format,
            "kdflow.export_uri": uri,
            "kdflow.export_max_abs_diff": f"{result.max_abs_diff:.3g}",
        }
        call.tracker.set_version_tags(config.register.student_name, version, tags)
    info = {
        "format": config.export.format,
        "method": result.method,
        "path": str(result.path),
        "artifact_uri": uri,
        "max_abs_diff": result.max_abs_diff,
        "samples": result.samples,
        "version": version,
    }
    return {
        "path": str(result.path),
        "sha256": file_sha256(result.path),
        "metrics": {"export_max_abs_diff": result.max_abs_diff},
        "info": info,
    }
