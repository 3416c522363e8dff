"""The CLI's report: a rich table of teacher / baseline / student and the stages."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich import box
from rich.table import Table


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def print_report(console: Console, report: dict[str, Any]) -> None:
    t = Table(title="kdflow: models on the test split (accuracies in %)", box=box.SIMPLE_HEAD,
              caption="agree: same top-1 as the teacher; ms@1: CPU latency at batch 1; img/s: CPU throughput "
                      "at batch 256; MFLOP: per sample")
    for col in ("model", "top1", "top5", "agree", "ECE", "params", "size", "ms@1", "img/s", "MFLOP"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for name, m in report["models"].items():
        t.add_row(name, f"{100 * m['top1']:.2f}", f"{100 * m['top5']:.2f}",
                  f"{100 * m['agreement']:.1f}" if "agreement" in m else "-", f"{m['ece']:.3f}",
                  _count(m["params"]), _fmt_bytes(m["size_bytes"]),
                  f"{m['latency_ms']:.2f}" if "latency_ms" in m else "-",
                  f"{m['throughput']:.0f}" if "throughput" in m else "-", f"{m['flops'] / 1e6:.2f}")
    console.print(t)
    s = Table(title="stages", box=box.SIMPLE_HEAD)
    for col in ("stage", "cached", "seconds", "fingerprint", "MLflow run"):
        s.add_column(col, no_wrap=True)
    for name, info in report["stages"].items():
        s.add_row(name, "yes" if info["cached"] else "no", f"{info['seconds']:.1f}", info["fingerprint"][:12],
                  info["mlflow_run_id"] or "-")
    console.print(s)
    reg = ", ".join(f"{k} v{v}" for k, v in report["registered"].items()) or "none"
    new = ", ".join(report["registered_new"]) or "none (all versions already registered)"
    console.print(f"registered: {reg}; new versions: {new}")
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
