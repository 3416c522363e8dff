"""`kdflow reproduce models:/NAME/VERSION` (or a pipeline run id): run the logged config again in a
fresh home and compare, side by side, the original and reproduced metrics and weights' sha256.
Where the data no longer have the original run's fingerprint nothing is trained: no metric or
weight could match.

The config comes from the pipeline run's ``config.yaml`` artifact, or, for runs logged before it
existed, from the run's params (the flattened config). A registered version names its pipeline run
by the ``kdflow.pipeline_run_id`` tag and its weights by ``kdflow.weights_sha256``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import typer
from rich import box
from rich.table import Table

from flows.console import Overrides, quiet_prefect, user_errors
from flows.console import out as console
from kdcore.errors import KdflowError
from kdcore.evaluate.promotion_rules import Version

if TYPE_CHECKING:  # mlflow loads with the command that uses it, not with every `kdflow` command
    from tasks.tracking import Tracker

QUALITY = ("top1", "top5", "agreement", "ece")  # timings differ run to run and are not compared

app = typer.Typer()


@dataclass
class Original:
    run_id: str
    config: dict[str, Any]
    config_source: str
    metrics: dict[str, float]
    data_fingerprint: str
    weights: dict[str, str] = field(default_factory=dict)  # registered model name -> sha256


def _unflatten(params: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in params.items():
        try:
            value: Any = json.loads(raw)  # Tracker.log_params wrote non-strings as JSON
        except ValueError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _pipeline_run_of(tracker: Tracker, ref: str) -> tuple[str, dict[str, Version]]:
    """The pipeline run id behind ``ref`` and the versions it names {name: Version}."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.startswith("models:/"):
            rest = ref[len("models:/") :]
            if "@" in rest:
                name, alias = rest.split("@", 1)
                mv = tracker.version_by_alias(name, alias)
                if mv is None:
                    raise KdflowError(f"{ref}: model {name!r} has no alias {alias!r}")
            elif "/" in rest:
                name, version = rest.rsplit("/", 1)
                mv = tracker.get_version(name, version)
            else:
                raise KdflowError(f"{ref!r}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
            run_id = mv.tags.get("kdflow.pipeline_run_id")
            if not run_id:
                raise KdflowError(
                    f"{ref} has no kdflow.pipeline_run_id tag: it was not registered by a kdflow pipeline"
                )
            return run_id, {mv.name: mv}
        run = tracker.get_run(ref)
        if run.tags.get("kdflow.kind") != "pipeline":
            parent = run.tags.get("mlflow.parentRunId")
            if not parent:
                raise KdflowError(f"run {ref} is not a kdflow pipeline run nor one of its stages")
            run = tracker.get_run(parent)
        tagged = [run, *tracker.child_runs(run.experiment_id, run.run_id)]  # the register stage's run names them
        versions = {
            key[len("registered.") :]: tracker.get_version(key[len("registered.") :], version)
            for r in tagged
            for key, version in r.tags.items()
            if key.startswith("registered.")
        }
    except MlflowException as exc:
        raise KdflowError(f"{ref}: not found in the MLflow store ({exc.message.splitlines()[0]})") from None
    return run.run_id, versions


def original(tracking_uri: str, ref: str, home: Path) -> Original:
    import yaml

    from tasks.tracking import Tracker

    tracker = Tracker(tracking_uri, home)
    run_id, versions = _pipeline_run_of(tracker, ref)
    run = tracker.get_run(run_id)
    text = tracker.artifact_text(run_id, "config.yaml")  # absent in older runs
    config, source = (yaml.safe_load(text), "config.yaml") if text is not None else (None, "params")
    if not isinstance(config, dict):
        config, source = _unflatten(run.params), "params"
    if not config:
        raise KdflowError(f"pipeline run {run_id} logged neither config.yaml nor params: nothing to reproduce")
    weights = {name: mv.tags.get("kdflow.weights_sha256", "") for name, mv in versions.items()}
    return Original(run_id, config, source, run.metrics, run.tags.get("kdflow.data_fingerprint", ""), weights)


@contextlib.contextmanager
def _store_in(home: Path) -> Iterator[str]:
    """MLflow in the fresh home's own store for the length of the rerun (never the original's)."""
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield f"sqlite:///{home / 'mlflow.db'}"
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def compare(orig: Original, report: dict[str, Any], new_weights: dict[str, str]) -> list[tuple[str, str, str, bool]]:
    rows: list[tuple[str, str, str, bool]] = []
    for model, metrics in report["models"].items():
        for key in QUALITY:
            if key not in metrics:
                continue
            before = orig.metrics.get(f"{model}.{key}")
            after = float(metrics[key])
            rows.append(
                (
                    f"{model} {key}",
                    "-" if before is None else f"{before:.6g}",
                    f"{after:.6g}",
                    before is not None and before == after,
                )
            )
    rows.append(
        (
            "data fingerprint",
            orig.data_fingerprint[:12] or "-",
            report["data_fingerprint"][:12],
            orig.data_fingerprint == report["data_fingerprint"],
        )
    )
    for name, sha in orig.weights.items():
        new = new_weights.get(name, "")
        rows.append((f"{name} sha256", sha[:12] or "-", new[:12] or "-", bool(sha) and sha == new))
    return rows


def reproduce_ref(
    ref: str, overrides: Optional[list[str]] = None, home: Optional[Path] = None, quiet: bool = False
) -> dict[str, Any]:
    from flows.progress import live_progress, quiet_libraries
    from flows.runner import run_pipeline
    from kdcore.config import config_from_dict
    from tasks.data import load_data
    from tasks.home import kdflow_home
    from tasks.tracking import check_reachable
    from tasks.uris import default_tracking_uri

    config_from_dict({}, list(overrides or []))  # an unknown --set key fails before anything is read
    orig_home = kdflow_home()
    uri = default_tracking_uri(orig_home)
    check_reachable(uri)  # a server that is down is said so at once, not as "not found" minutes later
    orig = original(uri, ref, orig_home)
    cfg = config_from_dict(orig.config, list(overrides or []))
    if home is not None and Path(home).is_dir() and any(Path(home).iterdir()):
        raise KdflowError(f"--home {home} is not empty: a reproduction needs a fresh home")
    data_fp = load_data(cfg.data).fingerprint  # missing or bad data fails here, as in `kdflow run`
    if orig.data_fingerprint and data_fp != orig.data_fingerprint:
        # other data cannot give the same metrics or weights: say so now rather than after training
        rows = [("data fingerprint", orig.data_fingerprint[:12], data_fp[:12], False)]
        return _outcome(orig, rows, None, None)
    fresh = Path(home) if home else Path(tempfile.mkdtemp(prefix="kdflow-reproduce-"))
    fresh.mkdir(parents=True, exist_ok=True)
    with _store_in(fresh) as uri, quiet_libraries(quiet), live_progress(console, quiet):
        report = run_pipeline(cfg, home=fresh)
        from tasks.tracking import Tracker

        tracker = Tracker(uri, fresh)
        new_weights = {
            name: tracker.get_version(name, str(v)).tags.get("kdflow.weights_sha256", "")
            for name, v in report["registered"].items()
        }
    rows = compare(orig, report, new_weights)
    return _outcome(orig, rows, fresh, report["mlflow_parent_run_id"])


def _outcome(orig: Original, rows: list[tuple[str, str, str, bool]], home: Optional[Path], run_id: Optional[str]):
    return {
        "original_run_id": orig.run_id,
        "config_source": orig.config_source,
        "home": str(home) if home else None,
        "rows": rows,
        "match": all(r[3] for r in rows),
        "reproduced_run_id": run_id,
        "trained": run_id is not None,  # None: the data differed, nothing ran
    }


@app.command()
def reproduce(
    ref: str = typer.Argument(
        ...,
        metavar="models:/NAME/VERSION | RUN_ID",
        help="a registered version (models:/NAME/VERSION or models:/NAME@ALIAS) or a pipeline run id",
    ),
    set_: Overrides = None,
    home: Optional[Path] = typer.Option(
        None, "--home", help="the fresh home to run in (default: a temporary one, removed when everything matches)"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress display"),
) -> None:
    """Run a registered model's pipeline again in a fresh home; compare metrics and weights' sha256.

    Exits 1 when anything differs (at once, before any training, when the data do)."""
    quiet_prefect(False)
    with user_errors():
        out = reproduce_ref(ref, list(set_ or []), home, quiet)
    t = Table(title=f"reproduction of {ref}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("", "original", "reproduced", "same"):
        t.add_column(col, no_wrap=True)
    for what, before, after, same in out["rows"]:
        t.add_row(what, before, after, "yes" if same else "[bold red]NO[/]")
    console.print(t)
    console.print(
        f"config from the original run's {out['config_source']} (run {out['original_run_id']})",
        highlight=False,
        soft_wrap=True,
    )
    if out["match"]:
        console.print("reproduced: the same metrics and weights")
        if home is None:
            shutil.rmtree(out["home"], ignore_errors=True)
        return
    if not out["trained"]:
        console.print(
            "[bold red]NOT reproduced[/]: the data differ from the original run's, so no metric or weight "
            "could match; nothing was trained",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(
        f"[bold red]NOT reproduced[/]: see the rows marked NO; the reproduction is kept in {out['home']}",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(1)
