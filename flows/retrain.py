"""Scheduled retraining with champion / challenger promotion.

1. Decide: retrain when forced, when there is no champion yet, when the data fingerprint differs
   from the champion's, or when the champion is older than ``retrain.max_age_days``.
2. Run the pipeline (a subflow; its MLflow run is a child of this flow's ``retrain`` run). Its
   registered student is the challenger.
3. Compare challenger and champion on the same held-out split: both versions' metrics from the
   registry in a pandas table, and McNemar's test on per-sample correctness.
4. Alias ``champion`` moves to the challenger only when it is better by ``retrain.min_improvement``
   AND significantly so (p < ``retrain.alpha``); otherwise the challenger gets alias
   ``challenger``. With no champion yet, the first challenger becomes champion.
5. The decision and the table go to a Prefect artifact, the MLflow run and the version's tags.

Any failure before step 4 ends the flow as failed with every alias where it was.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context

from kdcore.errors import ConfigError, KdflowError
from flows.params import ConfigParam, resolve_config
from flows.pipeline import pipeline_flow
from tasks.data import load_data
from tasks.home import kdflow_home
from tasks.promotion import (CHAMPION, Decision, apply_decision, compare_task, decide, retrain_reasons,
                             version_by_alias, wait_for_version)
from tasks.tracking import Tracker, check_reachable, default_tracking_uri


@flow(name="kdflow-retrain", description="Retrain when due and promote the new student only if it is "
                                         "significantly better than the champion.")
def retrain_flow(config: ConfigParam = "configs/default.yaml", overrides: Optional[list[str]] = None,
                 force: bool = False, home: Optional[str] = None) -> dict[str, Any]:
    cfg = resolve_config(config, overrides)
    if not cfg.register.enabled:
        raise ConfigError("the retrain flow promotes registered versions: register.enabled must be true")
    cfgd = cfg.model_dump(mode="json")
    home_path = Path(home) if home else kdflow_home()
    uri = default_tracking_uri(home_path)
    check_reachable(uri)
    tracker = Tracker(uri, home_path)
    name = cfg.register.student_name
    flow_run_id = str(get_run_context().flow_run.id)
    experiment_id = tracker.experiment_id(cfg.name)
    data = load_data(cfg.data)
    champion = version_by_alias(tracker, name, CHAMPION)
    reasons = retrain_reasons(champion, data.fingerprint, cfg.retrain.max_age_days, force)
    run_id = tracker.start_run(experiment_id, "retrain", tags={
        "kdflow.kind": "retrain", "kdflow.prefect_flow_run_id": flow_run_id,
        "kdflow.data_fingerprint": data.fingerprint,
        "kdflow.champion_before": champion.version if champion else ""})
    comparison: Optional[dict] = None
    report: Optional[dict] = None
    try:
        tracker.log_params(run_id, {"retrain": cfgd["retrain"], "force": force, "model": name})
        if not reasons:
            decision = Decision("skip", "no reason to retrain: same data and the champion is recent",
                                champion_before=champion.version if champion else None)
        else:
            report = pipeline_flow(cfgd, str(home_path), parent_run_id=run_id)
            decision, comparison = _judge(cfg, tracker, report, champion, home_path, uri, experiment_id, run_id)
        decision.reason = "; ".join(reasons + [decision.reason]) if reasons else decision.reason
        apply_decision(tracker, name, decision, flow_run_id)  # tags first, the alias last
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    result = {"decision": asdict(decision), "champion": decision.champion_after, "retrain_reasons": reasons,
              "comparison": comparison, "pipeline": report, "mlflow_run_id": run_id, "prefect_flow_run_id": flow_run_id}
    _record(tracker, run_id, name, result)
    tracker.end_run(run_id, "FINISHED")
    return result


def _judge(cfg, tracker: Tracker, report: dict, champion, home: Path, uri: str, experiment_id: str,
           run_id: str) -> tuple[Decision, Optional[dict]]:
    name = cfg.register.student_name
    version = (report.get("registered") or {}).get(name)
    evaluated = (report.get("artifacts") or {}).get("evaluate")  # the evaluate stage's comparison.csv
    if not version or not evaluated:
        raise KdflowError(f"the pipeline run is partial (registered: {report.get('registered')}); no alias was moved")
    challenger = wait_for_version(tracker, name, version)
    if champion is None:
        return Decision("promote", f"v{version} is the first champion of {name}", None, version), None
    if challenger.version == champion.version:
        return Decision("unchanged", f"the pipeline reproduced the champion v{version} itself (nothing changed)",
                        champion.version, version), None
    correct = json.loads((Path(evaluated).parent / "per_sample_correct.json").read_text())["student"]
    ctx = {"home": str(home), "tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": run_id}
    comparison = compare_task(cfg.model_dump(mode="json"), ctx, champion.as_dict(), challenger.as_dict(), correct)
    promote, why = decide(comparison["delta_top1"], comparison["mcnemar"]["p_value"], cfg.retrain.min_improvement,
                          cfg.retrain.alpha)
    return Decision("promote" if promote else "keep", why, champion.version, version, comparison["delta_top1"],
                    comparison["mcnemar"]["p_value"]), comparison


def _record(tracker: Tracker, run_id: str, name: str, result: dict) -> None:
    d = result["decision"]
    lines = [f"# kdflow retrain: {d['action']}", "", d["reason"], "",
             f"Model `{name}`: champion before v{d['champion_before'] or '-'}, challenger v{d['challenger'] or '-'}, "
             f"champion now v{result['champion'] or '-'}."]
    comparison = result["comparison"]
    metrics: dict[str, float] = {}
    if comparison:
        rows = comparison["table"]
        cols = list(rows[0].keys())
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
        m = comparison["mcnemar"]
        lines += ["", f"McNemar ({'exact' if m['exact'] else 'chi-square'}): challenger alone right on "
                      f"{m['only_a_correct']}, champion alone right on {m['only_b_correct']} of {m['n']} samples; "
                      f"p = {m['p_value']:.4g}."]
        create_table_artifact(rows, key="kdflow-retrain-comparison", description="champion vs challenger")
        tracker.log_text(run_id, json.dumps(comparison, indent=2), "comparison.json")
        metrics = {"p_value": m["p_value"], "delta_top1": comparison["delta_top1"],
                   "champion_top1": m["accuracy_b"], "challenger_top1": m["accuracy_a"]}
    create_markdown_artifact("\n".join(lines), key="kdflow-retrain-decision", description="retrain decision")
    tracker.log_metrics(run_id, {**metrics, "promoted": float(d["action"] == "promote")})
    tracker.set_tags(run_id, {"kdflow.decision": d["action"], "kdflow.decision_reason": d["reason"],
                              "kdflow.champion_after": result["champion"] or "",
                              "kdflow.challenger": d["challenger"] or ""})


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)
