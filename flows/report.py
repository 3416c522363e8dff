"""The CLI's report: a rich table of teacher / baseline / student and the stages."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def print_report(console: Console, report: dict[str, Any]) -> None:
    t = Table(title="kdflow: models on the test split")
    for col in ("model", "top-1", "top-5", "agree", "ECE", "params", "size", "latency (b=1)", "throughput", "FLOPs"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name, m in report["models"].items():
        t.add_row(name, f"{100 * m['top1']:.2f}%", f"{100 * m['top5']:.2f}%",
                  f"{100 * m['agreement']:.1f}%" if "agreement" in m else "-", f"{m['ece']:.3f}",
                  f"{int(m['params']):,}", _fmt_bytes(m["size_bytes"]),
                  f"{m['latency_ms']:.3f} ms" if "latency_ms" in m else "-",
                  f"{m['throughput']:.0f}/s" if "throughput" in m else "-", f"{m['flops'] / 1e6:.2f} M")
    console.print(t)
    s = Table(title="stages")
    for col in ("stage", "cached", "seconds", "fingerprint", "MLflow run"):
        s.add_column(col)
    for name, info in report["stages"].items():
        s.add_row(name, "yes" if info["cached"] else "no", f"{info['seconds']:.1f}", info["fingerprint"][:12],
                  info["mlflow_run_id"] or "-")
    console.print(s)
    reg = ", ".join(f"{k} v{v}" for k, v in report["registered"].items()) or "none"
    console.print(f"registered: {reg}" + ("" if report["registered_new"] else " (unchanged: cached)"))
    print_locations(console, report["home"], report["tracking_uri"], report)


def print_locations(console: Console, home: str, tracking_uri: str, report: dict[str, Any] | None = None) -> None:
    console.print(f"artifacts and cache: {home}")
    console.print(f"MLflow: {tracking_uri}" + (f"  (parent run {report['mlflow_parent_run_id']})" if report else ""))
    if tracking_uri.startswith("sqlite:"):
        console.print(f"  open the UI: mlflow ui --backend-store-uri {tracking_uri}")
    else:
        console.print(f"  open the UI: {tracking_uri}")
    import os

    api = os.environ.get("PREFECT_API_URL")
    if api:
        console.print(f"Prefect: {api}" + (f"  (flow run {report['prefect_flow_run_id']})" if report else ""))
    else:
        console.print("Prefect: temporary local server (runs are kept in ~/.prefect); to browse them, run "
                      "`prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
