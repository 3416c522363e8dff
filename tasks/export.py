"""Task `export`: the registered student as TorchScript, with an output parity check.

The file goes into the distill run that produced the registered version (``export/``), its largest
difference from the PyTorch model is logged there as ``export_max_abs_diff``, and the model
version is tagged with where the export is (``kdflow.export_uri``), so a version can be served
and evaluated without unpickling Python objects.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from prefect import task

from kdcore.config import PipelineConfig
from kdcore.export import export_torchscript
from kdcore.train.checkpoint import load_model
from tasks.context import RunContext
from tasks.data import load_data
from tasks.home import stage_dir

EXPORT_NAME = "student.torchscript.pt"
PARITY_SAMPLES = 512


@task(name="export")
def export_task(cfg: dict, ctx: dict, distill: dict, version: Optional[str]) -> dict[str, Any]:
    """Export the distilled student of ``distill`` (a stage record); tag registered ``version``."""
    t0 = time.perf_counter()
    config = PipelineConfig.model_validate(cfg)
    run_ctx = RunContext.from_dict(ctx)
    home = run_ctx.home
    data = load_data(config.data)
    model = load_model(distill["path"])
    out = stage_dir(home, "export", distill["fingerprint"]) / EXPORT_NAME
    result = export_torchscript(model, data.test.x[:PARITY_SAMPLES], out, config.export.atol)
    tracker = run_ctx.tracker()
    run_id = distill["mlflow_run_id"]
    tracker.log_artifact(run_id, result.path, "export")
    tracker.log_metrics(run_id, {"export_max_abs_diff": result.max_abs_diff})
    tracker.set_tags(run_id, {"kdflow.export_method": result.method})
    uri = f"runs:/{run_id}/export/{EXPORT_NAME}"
    info = {
        "format": config.export.format,
        "method": result.method,
        "path": str(result.path),
        "artifact_uri": uri,
        "max_abs_diff": result.max_abs_diff,
        "samples": result.samples,
        "version": version,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if version is not None:
        tags = {
            "kdflow.export_format": config.export.format,
            "kdflow.export_uri": uri,
            "kdflow.export_max_abs_diff": f"{result.max_abs_diff:.3g}",
        }
        tracker.set_version_tags(config.register.student_name, version, tags)
    return info
