"""Flow parameters shared by the retrain and sweep flows, and running a flow locally.

A deployment passes ``config`` either as a mapping (the pipeline config itself) or as the path of a
YAML file relative to the working directory (the repository, after the deployment's pull step),
plus optional ``overrides`` (``key.path=value``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from flows.errors import quiet_user_errors, reraise_user_error
from kdcore.config import PipelineConfig, config_from_dict, read_yaml
from kdcore.preflight import preflight

ConfigParam = Union[dict[str, Any], str]


def resolve_config(config: ConfigParam, overrides: Optional[list[str]] = None) -> PipelineConfig:
    """The validated (and preflighted) pipeline config of a flow parameter."""
    raw = read_yaml(Path(config)) if isinstance(config, str) else dict(config or {})
    cfg = config_from_dict(raw, list(overrides or []))
    preflight(cfg)
    return cfg


@contextlib.contextmanager
def local_results(home: Path) -> Iterator[None]:
    """Prefect task results of a local run under KDFLOW_HOME (as ``kdflow run`` keeps them).

    On kdflow's own server (local or temporary) flow runs send no heartbeats: no automation there reads
    them, and the engine's heartbeat thread, which sleeps in one-second steps, holds up the end of every
    flow run by up to a second. On a server of the user's (PREFECT_API_URL) they stay as configured."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    from flows.prefect_server import mode, prefect_for_run

    updates: dict[Any, Any] = {PREFECT_LOCAL_STORAGE_PATH: str(home / "prefect-results")}
    if mode() != "external":
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with prefect_for_run(), temporary_settings(updates=updates):
        yield


def run_locally(flow_fn: Callable[..., Any], results_home: Path, /, **params: Any) -> Any:
    """Call a flow with its task results under ``results_home``; a KdflowError wrapped by the
    orchestrator comes out as itself, and Prefect's console log does not repeat it."""
    quiet_user_errors()
    with local_results(results_home):
        try:
            return flow_fn(**params)
        except Exception as exc:
            reraise_user_error(exc)
            raise
