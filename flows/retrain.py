"""Scheduled retraining with champion / challenger promotion.

1. Decide: retrain when forced, when there is no champion yet, when the data fingerprint differs
   from the champion's, or when the champion is older than ``retrain.max_age_days``. A retrain
   that is forced or due to age while data, config and code are the champion's own trains afresh:
   ``trainer.seed`` becomes one above the largest seed of any registered version (recorded on the
   run, the decision and the version), so every training stage runs again instead of being found
   in the cache.
2. Run the pipeline (a subflow; its MLflow run is a child of this flow's ``retrain`` run). Its
   registered student is the challenger.
3. Compare challenger and champion on the same held-out split: both versions' metrics from the
   registry in a pandas table, and McNemar's test on per-sample correctness.
4. Alias ``champion`` moves to the challenger only when it is better by ``retrain.min_improvement``
   AND significantly so (p < ``retrain.alpha``); otherwise the challenger gets alias
   ``challenger``. With no champion yet, the first challenger becomes champion (as the register
   stage already made it).
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
from prefect.runtime import flow_run

from flows.params import ConfigParam, resolve_config
from flows.pipeline import pipeline_flow
from kdcore.config import PipelineConfig
from kdcore.errors import ConfigError, KdflowError
from tasks import events
from tasks.context import RunContext
from tasks.data import load_data
from tasks.fingerprints import fingerprint
from tasks.promotion import (
    CHAMPION,
    Decision,
    Version,
    apply_decision,
    compare_task,
    decide,
    fresh_seed,
    retrain_reasons,
)
from tasks.tracking import Tracker


@flow(
    name="kdflow-retrain",
    description="Retrain when due and promote the new student only if it is significantly better than the champion.",
)
def retrain_flow(
    config: ConfigParam = "configs/default.yaml",
    overrides: Optional[list[str]] = None,
    force: bool = False,
    home: Optional[str] = None,
) -> dict[str, Any]:
    cfg = resolve_config(config, overrides)
    if not cfg.register.enabled:
        raise ConfigError("the retrain flow promotes registered versions: register.enabled must be true")
    run_ctx = RunContext.open(cfg.name, home)
    tracker = run_ctx.tracker()
    name = cfg.register.student_name
    flow_run_id = str(flow_run.id)
    data = load_data(cfg.data)
    champion = tracker.version_by_alias(name, CHAMPION)
    reasons = retrain_reasons(champion, data.fingerprint, cfg.retrain.max_age_days, force)
    reproduces = champion is not None and champion.tags.get("kdflow.fingerprint") == student_fingerprint(
        cfg, data.fingerprint
    )
    seed = fresh_seed(reasons, reproduces, cfg.trainer.seed, tracker.versions(name))
    if seed is not None:  # without a new seed every stage would be cached: the champion again
        reasons.append(
            f"fresh training with trainer.seed {seed} (configured {cfg.trainer.seed}; the data and "
            "config are the champion's)"
        )
        cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"seed": seed})})
    cfgd = cfg.model_dump(mode="json")
    comparison: Optional[dict] = None
    report: Optional[dict] = None
    tags = {
        "kdflow.kind": "retrain",
        "kdflow.prefect_flow_run_id": flow_run_id,
        "kdflow.data_fingerprint": data.fingerprint,
        "kdflow.champion_before": champion.version if champion else "",
    }
    if seed is not None:
        tags["kdflow.retrain.seed"] = str(seed)
    with tracker.run(run_ctx.experiment_id, "retrain", tags=tags) as run_id:  # FAILED if anything below raises
        tracker.log_params(
            run_id, {"retrain": cfgd["retrain"], "force": force, "model": name, "trainer_seed": cfg.trainer.seed}
        )
        if not reasons:
            decision = Decision(
                "skip",
                "no reason to retrain: same data and the champion is recent",
                champion_before=champion.version if champion else None,
            )
        else:
            report = pipeline_flow(cfgd, str(run_ctx.home), parent_run_id=run_id)
            decision, comparison = _judge(cfg, tracker, report, champion, run_ctx.under(run_id))
        decision.seed = seed
        decision.reason = "; ".join(reasons + [decision.reason]) if reasons else decision.reason
        apply_decision(tracker, name, decision, flow_run_id)  # tags first, the alias last
        result = {
            "decision": asdict(decision),
            "champion": decision.champion_after,
            "retrain_reasons": reasons,
            "comparison": comparison,
            "pipeline": report,
            "mlflow_run_id": run_id,
            "prefect_flow_run_id": flow_run_id,
        }
        _record(tracker, run_id, name, result)
    return result


def student_fingerprint(cfg: PipelineConfig, data_fp: str) -> str:
    """The distill stage's fingerprint for ``cfg`` (what a registered student's ``kdflow.fingerprint`` holds)."""
    upstream: dict[str, dict] = {}
    for stage in ("teacher", "features", "pretrain", "distill"):
        upstream[stage] = {"fingerprint": fingerprint(stage, cfg, data_fp, upstream)}
    return upstream["distill"]["fingerprint"]


def _judge(
    cfg, tracker: Tracker, report: dict, champion: Optional[Version], ctx: RunContext
) -> tuple[Decision, Optional[dict]]:
    name = cfg.register.student_name
    version = (report.get("registered") or {}).get(name)
    evaluated = (report.get("artifacts") or {}).get("evaluate")  # the evaluate stage's comparison.csv
    withheld = (report.get("verdict") or {}).get("withheld")
    if withheld:
        return Decision("skip", f"no challenger: {withheld}", champion.version if champion else None), None
    if not version or not evaluated:
        raise KdflowError(f"the pipeline run is partial (registered: {report.get('registered')}); no alias was moved")
    challenger = tracker.get_version(name, version)  # register_model returned it READY
    if champion is None:
        return Decision("promote", f"v{version} is the first champion of {name}", None, version), None
    if challenger.version == champion.version:
        return Decision(
            "unchanged",
            f"the pipeline reproduced the champion v{version} itself (nothing changed)",
            champion.version,
            version,
        ), None
    correct = json.loads((Path(evaluated).parent / "per_sample_correct.json").read_text())["student"]
    events.emit("compare", "running", message=f"champion v{champion.version} vs challenger v{version}")
    try:
        comparison = compare_task(
            cfg.model_dump(mode="json"), ctx.as_dict(), champion.as_dict(), challenger.as_dict(), correct
        )
    except BaseException as exc:
        events.emit("compare", "failed", message=f"{type(exc).__name__}: {exc}")
        raise
    events.emit("compare", "done", message=f"top-1 {100 * comparison['delta_top1']:+.2f} points")
    promote, why = decide(
        comparison["delta_top1"], comparison["mcnemar"]["p_value"], cfg.retrain.min_improvement, cfg.retrain.alpha
    )
    return Decision(
        "promote" if promote else "keep",
        why,
        champion.version,
        version,
        comparison["delta_top1"],
        comparison["mcnemar"]["p_value"],
    ), comparison


def _record(tracker: Tracker, run_id: str, name: str, result: dict) -> None:
    d = result["decision"]
    lines = [
        f"# kdflow retrain: {d['action']}",
        "",
        d["reason"],
        "",
        f"Model `{name}`: champion before v{d['champion_before'] or '-'}, challenger v{d['challenger'] or '-'}, "
        f"champion now v{result['champion'] or '-'}.",
    ]
    comparison = result["comparison"]
    metrics: dict[str, float] = {}
    if comparison:
        rows = comparison["table"]
        cols = list(rows[0].keys())
        lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(r[c]) for c in cols) + " |" for r in rows]
        m = comparison["mcnemar"]
        lines += [
            "",
            f"McNemar ({'exact' if m['exact'] else 'chi-square'}): challenger alone right on "
            f"{m['only_a_correct']}, champion alone right on {m['only_b_correct']} of {m['n']} samples; "
            f"p = {m['p_value']:.4g}.",
        ]
        create_table_artifact(rows, key="kdflow-retrain-comparison", description="champion vs challenger")
        tracker.log_text(run_id, json.dumps(comparison, indent=2), "comparison.json")
        metrics = {
            "p_value": m["p_value"],
            "delta_top1": comparison["delta_top1"],
            "champion_top1": m["accuracy_b"],
            "challenger_top1": m["accuracy_a"],
        }
    create_markdown_artifact("\n".join(lines), key="kdflow-retrain-decision", description="retrain decision")
    tracker.log_metrics(run_id, {**metrics, "promoted": float(d["action"] == "promote")})
    tracker.set_tags(
        run_id,
        {
            "kdflow.decision": d["action"],
            "kdflow.decision_reason": d["reason"],
            "kdflow.champion_after": result["champion"] or "",
            "kdflow.challenger": d["challenger"] or "",
        },
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)
