"""The run's report: a rich table of teacher / baseline / student and the stages for the CLI, the
markdown summary shown in the Prefect UI, and in both the verdict: whether distillation paid and, when
it did not, what usually helps.

Both tables fit an 80-column terminal: short column names with their units in the header, numbers
without repeated units, and the long identifiers cut to a readable prefix (``--report`` writes the
full data as JSON). URLs are printed with their credentials redacted."""

from __future__ import annotations

import os
from typing import Any, Optional

from rich import box
from rich.console import Console
from rich.table import Table

from tasks.uris import redact

# two spaces between columns and none at the edges: ten columns fit in 80
COMPACT: dict[str, Any] = {
    "box": box.SIMPLE_HEAD,
    "show_edge": False,
    "pad_edge": False,
    "padding": (0, 1),
    "collapse_padding": True,
}
MODEL_CAPTION = (
    "top1/top5/agree (same top-1 as the teacher) in %; ECE: calibration error; "
    "ms@1: CPU latency at batch 1; img/s: CPU throughput at batch 256; MFLOP per sample"
)


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _kib(n: float) -> str:
    kib = n / 1024
    return f"{kib:.1f}" if kib < 100 else f"{kib:.0f}"


def _pct(m: dict[str, Any], key: str, digits: int = 2) -> str:
    return f"{100 * m[key]:.{digits}f}" if key in m else "-"


def models_table(report: dict[str, Any]) -> Table:
    t = Table(title="models on the test split", caption=MODEL_CAPTION, caption_justify="left", **COMPACT)
    for col in ("model", "top1", "top5", "agree", "ECE", "params", "KiB", "ms@1", "img/s", "MFLOP"):
        t.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for name, m in report["models"].items():
        t.add_row(
            name,
            _pct(m, "top1"),
            _pct(m, "top5"),
            _pct(m, "agreement", 1),
            f"{m['ece']:.3f}",
            _count(m["params"]),
            _kib(m["size_bytes"]),
            f"{m['latency_ms']:.2f}" if "latency_ms" in m else "-",
            f"{m['throughput']:.0f}" if "throughput" in m else "-",
            f"{m['flops'] / 1e6:.2f}",
        )
    return t


def stages_table(report: dict[str, Any]) -> Table:
    s = Table(title="stages", **COMPACT)
    for col, justify in (
        ("stage", "left"),
        ("cached", "left"),
        ("time s", "right"),
        ("fingerprint", "left"),
        ("MLflow run", "left"),
    ):
        s.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for name, info in report["stages"].items():
        s.add_row(
            name,
            "yes" if info["cached"] else "no",
            f"{info['seconds']:.1f}",
            info["fingerprint"][:12],
            info["mlflow_run_id"] or "-",
        )
    return s


def verdict_lines(report: dict[str, Any]) -> list[str]:
    """Did distillation pay: the verdict's message, then (when it did not) what usually helps and
    whether registration was withheld for it. Empty without a baseline to compare with."""
    v = report.get("verdict")
    if not v:
        return []
    lines = [v["message"][0].upper() + v["message"][1:] + "."]
    if not v["pays"]:
        lines.append(v["advice"])
        if v.get("withheld"):
            lines.append("Registration withheld (register.require_gain: true): no version was registered.")
        elif report.get("registered"):
            lines.append(
                "The student was registered anyway, tagged kdflow.beats_baseline=False "
                "(register.require_gain: true withholds such a student)."
            )
    return lines


def registered_line(report: dict[str, Any]) -> str:
    reg = ", ".join(f"{k} v{v}" for k, v in report["registered"].items()) or "none"
    new = ", ".join(report["registered_new"]) or "none (all versions already registered)"
    return f"registered: {reg}; new versions: {new}"


def print_verdict(console: Console, report: dict[str, Any]) -> None:
    lines = verdict_lines(report)
    if lines:  # a student that did not pay stands out in yellow; rich wraps the text to the terminal
        style = "green" if report["verdict"]["pays"] else "bold yellow"
        console.print(lines[0], style=style, highlight=False)
        for line in lines[1:]:
            console.print(line, highlight=False)


def print_result(console: Console, report: dict[str, Any]) -> None:
    """The result alone (``kdflow run --quiet``): the models table, the verdict, what was registered."""
    console.print(models_table(report))
    print_verdict(console, report)
    console.print(registered_line(report), soft_wrap=True)


def print_report(console: Console, report: dict[str, Any]) -> None:
    console.print(models_table(report))
    print_verdict(console, report)
    console.print(stages_table(report))
    console.print(registered_line(report))
    print_locations(console, report["home"], report["tracking_uri"], report)


def summary_markdown(report: dict[str, Any]) -> str:
    """The pipeline summary of the Prefect UI: the stages, the comparison with its verdict, and what
    was registered."""
    lines = ["# kdflow pipeline", "", "| stage | cached | seconds | MLflow run |", "|---|---|---|---|"]
    lines += [
        f"| {s} | {i['cached']} | {i['seconds']:.1f} | {i['mlflow_run_id']} |" for s, i in report["stages"].items()
    ]
    m = report["models"]
    if "student" in m and "baseline" in m:
        gain = 100 * (m["student"]["top1"] - m["baseline"]["top1"])
        lines += [
            "",
            f"Distilled student top-1 {100 * m['student']['top1']:.2f}% vs baseline "
            f"{100 * m['baseline']['top1']:.2f}% ({gain:+.2f} points); teacher {100 * m['teacher']['top1']:.2f}%.",
        ]
    verdict = verdict_lines(report)
    if verdict:
        verdict[0] = f"**{verdict[0]}**"
        lines += [""] + [f"> {line}  " for line in verdict]
    lines += ["", f"Registered: {report['registered']} (new versions: {report['registered_new']})"]
    return "\n".join(lines)


def prefect_location(flow_run_id: Optional[str] = None) -> str:
    """Where this process's flow runs went, credentials redacted."""
    api = os.environ.get("PREFECT_API_URL")
    if api:
        return f"Prefect: {redact(api)}" + (f"  (flow run {flow_run_id})" if flow_run_id else "")
    from flows.prefect_server import MODE_ENV, running_server

    server = None if os.environ.get(MODE_ENV, "").strip().lower() == "ephemeral" else running_server()
    if server is not None:
        link = f"{server.ui_url}/runs/flow-run/{flow_run_id}" if flow_run_id else server.ui_url
        return f"Prefect UI: {link}"
    return "Prefect: a temporary server, gone with the run (`kdflow server start` keeps one)"


def print_locations(console: Console, home: str, tracking_uri: str, report: dict[str, Any] | None = None) -> None:
    tracking_uri = redact(tracking_uri)
    # locations are printed whole (soft-wrapped): a URL cut in two cannot be clicked
    console.print(f"artifacts and cache: {home}", soft_wrap=True, highlight=False)
    console.print(f"MLflow: {tracking_uri}", soft_wrap=True, highlight=False)
    if report:
        console.print(f"  parent run {report['mlflow_parent_run_id']}", highlight=False)
    ui = "kdflow ui" if tracking_uri.startswith("sqlite:") else tracking_uri
    console.print(f"  open the UI: {ui}", soft_wrap=True, highlight=False)
    console.print(
        prefect_location(report.get("prefect_flow_run_id") if report else None), soft_wrap=True, highlight=False
    )


def _num(v: Any, fmt: str, scale: float = 1.0) -> str:
    """``v * scale`` formatted, or "-" for a trial that has no such figure (None, NaN, text)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:  # v != v: NaN
        return "-"
    return format(v * scale, fmt)


def sweep_table(rows: list[dict[str, Any]]) -> Table:
    """A sweep's trials: the overrides wrap in their own column, the figures stay on one line."""
    t = Table(
        title="sweep trials on the test split",
        caption="top1 in %; gain: points over the plain-trained baseline; ms@1: CPU latency at batch 1; "
        "pareto: no other trial is better at once in top1, latency and size",
        caption_justify="left",
        **COMPACT,
    )
    t.add_column("trial", justify="right", no_wrap=True)
    t.add_column("overrides", ratio=1, overflow="fold")
    for col in ("status", "top1", "gain", "ms@1", "KiB", "pareto"):
        t.add_column(col, justify="left" if col == "status" else "right", no_wrap=True)
    for r in rows:
        t.add_row(
            str(r.get("trial", "")),
            str(r.get("label", "")),
            str(r.get("status", "")),
            _num(r.get("top1"), ".2f", 100),
            _num(r.get("gain_vs_baseline"), "+.2f", 100),
            _num(r.get("latency_ms"), ".2f"),
            _num(r.get("size_bytes"), ".1f", 1 / 1024),
            "yes" if r.get("pareto") is True else "",
        )
    return t
