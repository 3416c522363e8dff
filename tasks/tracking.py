"""The MLflow adapter: every run, metric, model and registry call goes through here, always with
an explicit run id (MLflow's active run is per thread)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import mlflow
import mlflow.artifacts
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

import kdcore
from kdcore.errors import KdflowError
from kdcore.evaluate.promotion_rules import Version
from tasks.compute_gate import GATE
from tasks.sqlite_store import seed_new_store
from tasks.uris import redact

_LOCK = threading.RLock()  # one writer at a time from this process (SQLite stores dislike concurrency)
ALIAS_ATTEMPTS = 5  # set_alias: tries against a concurrent first promotion of the same model
# MLflow 3's UI opens an experiment on its GenAI overview unless the experiment says it holds
# model training ("Machine learning" in the UI's experiment-type switch; the tag its JS sets)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
_INITIALISED: set[str] = set()  # SQLite stores created (or found) by this process


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def process_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for the fluent calls (log_model,
    register_model, load_model) inside, then put back as it was.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI to os.environ: left there, a later
    pipeline in the same process (a Prefect worker, a test session) with another KDFLOW_HOME would
    log into this one's store. Hold ``_LOCK`` around it: the setting is global to the process."""
    with _LOCK:
        saved_env, saved_uri = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved_uri)
            if saved_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved_env


@dataclass(frozen=True)
class RunView:
    """What readers of a finished run need of it (no MLflow object leaves the tracker)."""

    run_id: str
    experiment_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


# MLflow's client defaults, where the user has not set them (kdflow's processes only):
MLFLOW_DEFAULTS = {
    # MLflow prints "View run at <tracking URI>" on every run end: noisy, and it would print any
    # credentials embedded in the URI
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # a tracking server that went away mid-run: fail in about half a minute (retries after 2, 4, 8
    # and 16 s) rather than MLflow's several minutes per call (7 retries, made for rate-limited
    # hosted backends: set these two variables to have them back)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    # downloads (reproduce, retrain) print no tqdm bar into the progress display
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
for _name, _value in MLFLOW_DEFAULTS.items():
    os.environ.setdefault(_name, _value)


class Tracker:
    """A thin wrapper over ``MlflowClient`` bound to one tracking URI."""

    def __init__(self, uri: str, home: Path) -> None:
        self.uri = uri
        self.home = home
        self._create_store()
        self.client = MlflowClient(tracking_uri=uri)

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlartifacts"

    def _create_store(self) -> None:
        """Create a new SQLite store with its default artifact root under KDFLOW_HOME.

        MLflow's client would create it with the root ``./mlruns`` of the current directory, and
        the store's "Default" experiment (id 0) would point there; anything logged without an
        explicit experiment would land in the user's working directory."""
        if not self.uri.startswith("sqlite:///") or self.uri in _INITIALISED:
            return
        db = Path(self.uri[len("sqlite:///") :])
        if not db.parent.is_dir():  # check_reachable reports it; MLflow's own error otherwise
            return
        with _LOCK:
            if not db.exists():
                from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

                seed_new_store(db)  # a copy of a store migrated once (tasks/sqlite_store.py)
                SqlAlchemyStore(self.uri, self.artifact_root.as_uri())  # engine cached by MLflow, reused
            _INITIALISED.add(self.uri)

    def experiment_id(self, name: str) -> str:
        """The experiment ``name`` (created when missing), marked as a model-training experiment."""
        with _LOCK:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                location = None
                if self.uri.startswith("sqlite:"):  # keep artifacts beside the default store, not in ./mlruns
                    location = self.artifact_root.as_uri()
                try:
                    return self.client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
                except MlflowException:  # created by another process meanwhile
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise
            for key, value in EXPERIMENT_KIND.items():
                if key not in exp.tags:  # an experiment made before kdflow marked them (a user's choice is kept)
                    self.client.set_experiment_tag(exp.experiment_id, key, value)
            return exp.experiment_id

    def start_run(
        self, experiment_id: str, name: str, parent: Optional[str] = None, tags: Optional[dict[str, str]] = None
    ) -> str:
        tags = dict(tags or {})
        if parent:
            tags["mlflow.parentRunId"] = parent
        with _LOCK:
            return self.client.create_run(experiment_id, run_name=name, tags=tags).info.run_id

    @contextlib.contextmanager
    def run(
        self,
        experiment_id: str,
        name: str,
        parent: Optional[str] = None,
        tags: Optional[dict[str, str]] = None,
        run_id: Optional[str] = None,
    ) -> Iterator[str]:
        """A run (a new one, or ``run_id`` reopened) that ends FINISHED when the block completes
        and FAILED when it raises (the exception goes on)::

            with tracker.run(exp, "distill", parent=parent) as run_id:
                tracker.log_metrics(run_id, {...})
        """
        if run_id is None:
            run_id = self.start_run(experiment_id, name, parent=parent, tags=tags)
        else:
            self.reopen_run(run_id)
            if tags:
                self.set_tags(run_id, tags)
        try:
            yield run_id
        except BaseException:
            self.end_run(run_id, "FAILED")
            raise
        self.end_run(run_id, "FINISHED")

    def reopen_run(self, run_id: str) -> None:
        with _LOCK:
            self.client.update_run(run_id, status="RUNNING")

    def failed_run(self, experiment_id: str, parent: str, stage: str, fingerprint: str) -> Optional[str]:
        """The newest FAILED run of ``stage`` with this fingerprint under ``parent``, if any."""
        with _LOCK:
            found = self.client.search_runs(
                [experiment_id],
                max_results=1,
                order_by=["attributes.start_time DESC"],
                filter_string=(
                    f"tags.mlflow.parentRunId = '{parent}' and tags.`kdflow.stage` = '{stage}' "
                    f"and tags.`kdflow.fingerprint` = '{fingerprint}' and attributes.status = 'FAILED'"
                ),
            )
        return found[0].info.run_id if found else None

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        with _LOCK:
            return {m.step for m in self.client.get_metric_history(run_id, key)}

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        with _LOCK:
            self.client.set_terminated(run_id, status=status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        flat = flatten(params)
        items = [Param(k, redact(json.dumps(v) if not isinstance(v, str) else v)[:6000]) for k, v in flat.items()]
        with _LOCK:
            for i in range(0, len(items), 100):
                self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(
        self, run_id: str, metrics: dict[str, Any], step: Optional[int] = None, tags: Optional[dict[str, Any]] = None
    ) -> None:
        """Metrics (finite numbers; others are skipped) and, in the same write, ``tags``."""
        import time

        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, step or 0)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        ]
        run_tags = [RunTag(k, redact(str(v))[:5000]) for k, v in (tags or {}).items()]
        with _LOCK:
            for i in range(0, max(len(items), 1), 500):
                batch = items[i : i + 500]
                if batch or (i == 0 and run_tags):
                    self.client.log_batch(run_id, metrics=batch, tags=run_tags if i == 0 else [])

    def log_metric_steps(self, run_id: str, steps: list[tuple[int, dict[str, Any]]]) -> None:
        """Several steps' metrics (``[(step, {name: value})]``) in as few writes as the store takes."""
        import time

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for step, metrics in steps
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
        ]
        with _LOCK:
            for i in range(0, len(items), 500):
                self.client.log_batch(run_id, metrics=items[i : i + 500])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        with _LOCK:
            self.client.log_batch(run_id, tags=[RunTag(k, redact(str(v))[:5000]) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: Path, artifact_path: Optional[str] = None) -> None:
        with _LOCK:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(text)
            self.log_artifact(run_id, p)

    def log_torch_model(
        self,
        run_id: str,
        model: torch.nn.Module,
        example: torch.Tensor,
        name: str = "model",
        extra_files: Optional[list[Path]] = None,
    ) -> str:
        """Log ``model`` with the pytorch flavour (kdcore shipped as code) and return its model URI.

        ``extra_files`` (e.g. the text vocabulary) are stored in the model under ``extra_files/``."""
        with GATE.tracing():  # torch.export: never beside another stage's compute (tasks/compute_gate.py)
            return self._log_torch_model(run_id, model, example, name, extra_files)

    def _log_torch_model(
        self, run_id: str, model: torch.nn.Module, example: torch.Tensor, name: str, extra_files: Optional[list[Path]]
    ) -> str:
        from mlflow.models import infer_signature

        # the standard memory format: a model trained channels-last (trainer.channels_last) is served
        # like any other (torch.export would otherwise save its NHWC-strided weights as they are)
        model = model.cpu().eval().to(memory_format=torch.contiguous_format)
        x = example.cpu().numpy()
        with torch.no_grad():
            y = model(example.cpu()).numpy()
        torch_req = f"torch=={torch.__version__.split('+')[0]}"
        with _LOCK:
            # the logged model belongs to the run's experiment; left to MLflow, it would go to the
            # process's active experiment ("Default", id 0, whose artifacts may lie in ./mlruns)
            run = self.client.get_run(run_id)
            logged = self.client.create_logged_model(
                run.info.experiment_id, name=name, source_run_id=run_id, params=dict(run.data.params)
            )
        with process_uri(self.uri), warnings.catch_warnings():
            # torch.export on nn.GRU/LSTM warns that their _flat_weights were "assigned during export":
            # harmless (tests/test_sequence_pipeline.py checks the logged model against the trained one)
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights", category=UserWarning)
            info = mlflow.pytorch.log_model(
                model,
                name=name,
                run_id=run_id,
                model_id=logged.model_id,
                input_example=x,
                signature=infer_signature(x, y),
                pip_requirements=[torch_req, f"numpy=={np.__version__}"],
                code_paths=[str(Path(kdcore.__file__).parent)],
                extra_files=[str(p) for p in extra_files] if extra_files else None,
                # MLflow would load the model it just wrote back and predict on the input example (a
                # third of log_model's time); the stage's own weights are what was checked
                validate_serving_input=False,
            )
        return info.model_uri

    def find_version(self, name: str, fingerprint: str) -> Optional[str]:
        """The oldest version of ``name`` registered for this stage fingerprint, if any."""
        with _LOCK:
            found = self.client.search_model_versions(f"name='{name}' and tags.`kdflow.fingerprint`='{fingerprint}'")
        return str(min(int(v.version) for v in found)) if found else None

    def register(self, model_uri: str, name: str, tags: dict[str, Any]) -> tuple[str, bool]:
        """Register ``model_uri`` as a version of ``name`` unless the same fingerprint already is one.

        Returns (version, created)."""
        existing = (
            self.find_version(name, str(tags.get("kdflow.fingerprint", ""))) if "kdflow.fingerprint" in tags else None
        )
        if existing is not None:
            return existing, False
        # the client's calls, as mlflow.register_model makes them for a logged model's URI, without the
        # lines it prints to stderr ("Successfully registered model ...", "Created version ..."): the
        # report says what was registered, and --quiet prints nothing else. The registry looks the
        # logged model up in the process's tracking store: hence process_uri
        with _LOCK, process_uri(self.uri):
            try:
                self.client.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            ref = model_uri[len("models:/") :] if model_uri.startswith("models:/") else ""
            mv = self.client.create_model_version(  # waits until the version is READY
                name,
                model_uri,
                tags={k: redact(str(v)) for k, v in tags.items()},
                model_id=ref if ref and "/" not in ref else None,  # models:/<model id>, as log_model gives
            )
        return str(mv.version), True

    # -- the model registry ------------------------------------------------------------------

    def get_version(self, name: str, version: str) -> Version:
        with _LOCK:
            return _version(self.client.get_model_version(name, version))

    def versions(self, name: str) -> list[Version]:
        """Every version of registered model ``name`` (none when the model does not exist)."""
        with _LOCK:
            return [_version(mv) for mv in self.client.search_model_versions(f"name='{name}'")]

    def version_by_alias(self, name: str, alias: str) -> Optional[Version]:
        with _LOCK:
            try:
                return _version(self.client.get_model_version_by_alias(name, alias))
            except MlflowException as exc:
                if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                    return None
                raise

    def set_version_tags(self, name: str, version: str, tags: dict[str, Any]) -> None:
        with _LOCK:
            for key, value in tags.items():
                self.client.set_model_version_tag(name, version, key, redact(str(value))[:5000])

    def set_model_tags(self, name: str, tags: dict[str, Any]) -> None:
        with _LOCK:
            for key, value in tags.items():
                self.client.set_registered_model_tag(name, key, redact(str(value))[:5000])

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point ``alias`` of model ``name`` at ``version``. MLflow's SQL store sets an alias by
        reading, then inserting or updating its row: two pipelines promoting the same model at the
        same moment can both read "none" and the second insert then fails on the unique key. The
        row exists by then, so the call is made again (it updates it): the last promotion wins."""
        with _LOCK:
            for attempt in range(ALIAS_ATTEMPTS):
                try:
                    self.client.set_registered_model_alias(name, alias, version)
                    return
                except MlflowException as exc:
                    if "UNIQUE constraint" not in str(exc) and "IntegrityError" not in str(exc):
                        raise
                    if attempt == ALIAS_ATTEMPTS - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))

    def delete_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` from model ``name``; nothing happens when it is not set."""
        with _LOCK:
            if self.version_by_alias(name, alias) is not None:
                self.client.delete_registered_model_alias(name, alias)

    def run_metrics(self, run_id: Optional[str]) -> dict[str, float]:
        """The run's latest metrics ({} for no run or a run that is gone)."""
        if not run_id:
            return {}
        with _LOCK:
            try:
                return dict(self.client.get_run(run_id).data.metrics)
            except MlflowException:
                return {}

    def get_run(self, run_id: str) -> RunView:
        """A run's experiment, params, metrics and tags (MLflow's errors pass through)."""
        with _LOCK:
            run = self.client.get_run(run_id)
        return RunView(
            run.info.run_id, run.info.experiment_id, dict(run.data.params), dict(run.data.metrics), dict(run.data.tags)
        )

    def child_runs(self, experiment_id: str, parent: str) -> list[RunView]:
        with _LOCK:
            found = self.client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
        return [
            RunView(r.info.run_id, r.info.experiment_id, dict(r.data.params), dict(r.data.metrics), dict(r.data.tags))
            for r in found
        ]

    def artifact_text(self, run_id: str, path: str) -> Optional[str]:
        """The text of a run's artifact ``path``, or None when the run has no such artifact."""
        with _LOCK:
            if not any(f.path == path for f in self.client.list_artifacts(run_id)):
                return None
            with tempfile.TemporaryDirectory() as tmp:
                return Path(self.client.download_artifacts(run_id, path, tmp)).read_text()

    def download(self, artifact_uri: str, dst: Path) -> Path:
        with _LOCK:
            return Path(
                mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=self.uri)
            )

    def load_pytorch_model(self, name: str, version: str, dst: Path) -> torch.nn.Module:
        """A registered version's PyTorch model (MLflow's pytorch flavour), ``sys.path`` left as it was."""
        import sys

        import mlflow.pytorch

        saved_path = list(sys.path)  # the model's code_paths are prepended to sys.path while loading
        try:
            with process_uri(self.uri):
                return mlflow.pytorch.load_model(f"models:/{name}/{version}", dst_path=str(dst))
        finally:
            sys.path[:] = saved_path


def _version(mv: Any) -> Version:
    from datetime import datetime, timezone

    created = datetime.fromtimestamp((mv.creation_timestamp or 0) / 1000, tz=timezone.utc)
    return Version(mv.name, str(mv.version), mv.run_id, created, dict(mv.tags or {}))


def _ping(url: str) -> None:
    """GET ``url`` (credentials in it are sent as basic auth); raise on any failure."""
    import requests

    requests.get(url, timeout=5).raise_for_status()


def check_prefect_api() -> None:
    """Fail with one clear message when PREFECT_API_URL names a server that does not answer."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return
    try:
        _ping(url.rstrip("/") + "/health")
    except Exception as exc:  # noqa: BLE001
        raise KdflowError(
            f"Prefect server {redact(url)} (PREFECT_API_URL) is unreachable "
            f"({redact(str(exc))}); start it with `prefect server start` or unset PREFECT_API_URL "
            "to use a temporary local server"
        ) from None


def check_reachable(uri: str) -> None:
    """Fail with one clear message when the tracking store cannot be reached or created."""
    if uri.startswith("sqlite:///"):
        parent = Path(uri[len("sqlite:///") :]).parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise KdflowError(f"MLflow tracking URI {uri}: directory {parent} does not exist or is not writable")
        return
    if not uri.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        from mlflow.tracking._tracking_service.utils import _tracking_store_registry  # MLflow's own scheme list

        scheme = urlsplit(uri).scheme.split("+")[0].lower()
        if scheme not in _tracking_store_registry._registry:
            raise KdflowError(
                f"MLFLOW_TRACKING_URI {redact(uri)}: MLflow has no store for the scheme {scheme!r} "
                "(use http(s)://HOST:PORT, sqlite:///PATH or a database URI; unset it to use "
                "KDFLOW_HOME/mlflow.db)"
            )
        return
    try:
        _ping(uri.rstrip("/") + "/health")
    except Exception as exc:  # noqa: BLE001
        raise KdflowError(
            f"MLflow tracking server {redact(uri)} is unreachable ({redact(str(exc))}); start it or "
            "fix MLFLOW_TRACKING_URI"
        ) from None
