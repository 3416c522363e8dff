"""Running the pipeline flow from Python or the CLI: validate first, then run with Prefect's
results stored under KDFLOW_HOME."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from kdcore.config import PipelineConfig, load_config
from kdcore.errors import KdflowError
from kdcore.preflight import preflight, preflight_with_data
from tasks.data import load_data
from tasks.home import kdflow_home
from tasks.tracking import check_prefect_api, check_reachable, default_tracking_uri


def run_pipeline(config: Path | str | PipelineConfig | None = None, overrides: Optional[list[str]] = None,
                 home: Optional[Path] = None) -> dict[str, Any]:
    """Validate ``config`` and run the pipeline flow; returns the report. Raises KdflowError."""
    cfg = config if isinstance(config, PipelineConfig) else load_config(config, overrides)
    preflight(cfg)
    home = Path(home) if home else kdflow_home()
    check_reachable(default_tracking_uri(home))
    check_prefect_api()
    data = load_data(cfg.data)  # missing or bad data fails here, before any run is opened
    preflight_with_data(cfg, tuple(data.input_shape), data.num_classes, example=data.train.x[:2],
                        in_channels=data.in_channels)

    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.pipeline import pipeline_flow
    from flows.prefect_server import prefect_for_run

    with prefect_for_run(), temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: str(home / "prefect-results")}):
        try:
            return pipeline_flow(cfg.model_dump(mode="json"), str(home))
        except KdflowError:
            raise
        except Exception as exc:  # an error of ours wrapped by the orchestrator
            cause = exc
            while cause is not None:
                if isinstance(cause, KdflowError):
                    raise cause from None
                cause = cause.__cause__ or cause.__context__
            raise
