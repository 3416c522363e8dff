"""Running the pipeline flow from Python or the CLI: validate first, then run with Prefect's
results stored under KDFLOW_HOME."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from kdcore.config import PipelineConfig, load_config
from kdcore.preflight import preflight, preflight_data
from tasks.data import load_data
from tasks.home import kdflow_home
from tasks.tracking import check_prefect_api, check_reachable
from tasks.uris import default_tracking_uri


def run_pipeline(
    config: Path | str | PipelineConfig | None = None,
    overrides: Optional[list[str]] = None,
    home: Optional[Path] = None,
) -> dict[str, Any]:
    """Validate ``config`` and run the pipeline flow; returns the report. Raises KdflowError."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, overrides)
    preflight(cfg)
    home = Path(home) if home else kdflow_home()
    check_reachable(default_tracking_uri(home))
    check_prefect_api()
    data = load_data(cfg.data)  # missing or bad data fails here, before any run is opened
    preflight_data(cfg, data)

    from flows.params import run_locally
    from flows.pipeline import pipeline_flow, warm_loader_workers

    warm_loader_workers(data)  # the loaders run in the flow's task threads: their server starts now
    return run_locally(pipeline_flow, home, config=cfg.model_dump(mode="json"), home=str(home))
