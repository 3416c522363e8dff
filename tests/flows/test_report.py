"""The run report fits an 80-column terminal with nothing cut, and prints no credentials."""

from __future__ import annotations

from rich.console import Console

from flows.report import print_locations, print_report

MODELS = {  # the widest values a run produces: a large teacher, the full set of measures
    "teacher": {
        "top1": 0.9778,
        "top5": 1.0,
        "ece": 0.0123,
        "params": 11_689_512,
        "size_bytes": 46_827_520,
        "latency_ms": 123.45,
        "throughput": 12345.6,
        "flops": 1_823_000_000.0,
    },
    "baseline": {
        "top1": 0.8431,
        "top5": 0.9912,
        "agreement": 0.8611,
        "ece": 0.1234,
        "params": 23_456,
        "size_bytes": 96_000,
        "latency_ms": 0.41,
        "throughput": 98765.0,
        "flops": 1_230_000.0,
    },
    "student": {
        "top1": 0.9172,
        "top5": 0.9987,
        "agreement": 0.9321,
        "ece": 0.0456,
        "params": 23_456,
        "size_bytes": 96_000,
        "latency_ms": 0.42,
        "throughput": 97654.0,
        "flops": 1_230_000.0,
    },
}
STAGES = {
    s: {
        "cached": i % 2 == 0,
        "seconds": 1234.5 if s == "teacher" else 0.1,
        "fingerprint": "f" * 64,
        "mlflow_run_id": "0123456789abcdef0123456789abcdef",
    }
    for i, s in enumerate(("teacher", "features", "pretrain", "distill", "baseline", "evaluate", "register"))
}


def _report(**extra):
    return {
        "models": MODELS,
        "stages": STAGES,
        "registered": {"tiny-teacher": "12", "tiny-student": "13"},
        "registered_new": ["tiny-student"],
        "home": "/tmp/h",
        "tracking_uri": "sqlite:////tmp/h/mlflow.db",
        "mlflow_parent_run_id": "a" * 32,
        "prefect_flow_run_id": "b" * 8,
        **extra,
    }


def _render(fn, *args) -> list[str]:
    console = Console(width=80, record=True, force_terminal=False, color_system=None)
    fn(console, *args)
    return console.export_text().splitlines()


def test_tables_fit_80_columns_without_cutting_a_cell(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    lines = _render(print_report, _report())
    assert max(len(line) for line in lines) <= 80, "\n".join(lines)
    text = "\n".join(lines)
    assert "…" not in text
    for name, m in MODELS.items():  # each model on one line, every value whole
        row = next(line for line in lines if line.startswith(name))
        expected = [
            f"{100 * m['top1']:.2f}",
            f"{100 * m['top5']:.2f}",
            f"{m['ece']:.3f}",
            f"{m['flops'] / 1e6:.2f}",
            f"{m['throughput']:.0f}",
            f"{m['latency_ms']:.2f}",
        ]
        for value in expected:
            assert value in row.split(), (value, row)
    assert "45730" in text  # the teacher's size in KiB, the unit in the header
    for header in ("model", "top1", "top5", "agree", "ECE", "params", "KiB", "ms@1", "img/s", "MFLOP"):
        assert header in text
    stages = lines[next(i for i, line in enumerate(lines) if line.strip() == "stages") :]
    for stage, info in STAGES.items():
        row = next(line for line in stages if line.startswith(stage))
        assert info["mlflow_run_id"] in row and "f" * 12 in row, row


def test_report_and_locations_redact_credentials(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "https://alice:s3cret@prefect.example.com/api")
    text = "\n".join(_render(print_report, _report(tracking_uri="https://bob:hunter2@mlflow.example.com")))
    assert "s3cret" not in text and "hunter2" not in text
    assert "https://***@prefect.example.com/api" in text and "https://***@mlflow.example.com" in text
    text = "\n".join(_render(print_locations, "/tmp/h", "https://bob:hunter2@mlflow.example.com"))
    assert "hunter2" not in text and "s3cret" not in text and "***@mlflow.example.com" in text


def test_ui_prints_the_servers_it_was_given_with_credentials_redacted(kdhome, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://bob:hunter2@mlflow.example.com")
    monkeypatch.setenv("PREFECT_API_URL", "https://alice:s3cret@prefect.example.com/api")
    out = CliRunner().invoke(app, ["ui"])
    assert out.exit_code == 0, out.output
    assert "hunter2" not in out.output and "s3cret" not in out.output
    assert "MLflow UI:  https://***@mlflow.example.com" in out.output
    assert "Prefect UI: https://***@prefect.example.com" in out.output
    assert not (kdhome / "mlflow-ui").exists() and not (kdhome / "prefect-server").exists()  # nothing started


UNPAID = {
    "pays": False,
    "gain": -0.038,
    "margin": 0.011,
    "p_value": 1e-6,
    "message": "distillation did not pay: the distilled student does not beat the plain-trained baseline: "
    "student 66.00% vs baseline 69.80% (-3.80 points, margin ±1.10 on 10000 test samples, McNemar p = 1e-06)",
    "advice": "What usually helps: distil longer; a lower learning rate; no hint stage; a closer teacher.",
    "withheld": None,
}


def test_the_report_says_when_distillation_did_not_pay(monkeypatch):
    from flows.report import print_result, summary_markdown

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    for fn in (print_report, print_result):
        lines = _render(fn, _report(verdict=UNPAID))
        assert max(len(line) for line in lines) <= 80, "\n".join(lines)
        text = " ".join(" ".join(lines).split())  # rich wraps long lines: compare with the wrapping undone
        assert "Distillation did not pay: the distilled student does not beat the plain-trained baseline" in text
        assert "-3.80 points, margin ±1.10 on 10000 test samples" in text
        assert UNPAID["advice"] in text
        assert "registered anyway, tagged kdflow.beats_baseline=False" in text
        # the verdict comes right after the models, before the stages and the registration
        assert text.index("Distillation did not pay") < text.index("registered: tiny-teacher v12")
    withheld = _report(verdict={**UNPAID, "withheld": "registration withheld ..."}, registered={}, registered_new=[])
    text = " ".join(" ".join(_render(print_result, withheld)).split())
    assert "Registration withheld (register.require_gain: true)" in text and "registered anyway" not in text
    md = summary_markdown(_report(verdict=UNPAID))
    assert "> **Distillation did not pay: the distilled student does not beat" in md
    assert f"> {UNPAID['advice']}" in md


def test_a_paying_student_gets_one_line_and_no_advice(monkeypatch):
    from flows.report import summary_markdown

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    paid = {**UNPAID, "pays": True, "gain": 0.02, "message": "distillation paid: student 91.72% vs ...", "advice": ""}
    text = "\n".join(_render(print_report, _report(verdict=paid)))
    assert "Distillation paid: student 91.72% vs ..." in text
    assert "What usually helps" not in text and "registered anyway" not in text
    assert "Distillation" not in "\n".join(_render(print_report, _report(verdict=None)))  # no baseline, no verdict
    assert "**Distillation paid" in summary_markdown(_report(verdict=paid))
