"""Say when distillation did not pay: the student against the baseline with a margin that depends
on the test split's size, the verdict on the registered version, and register.require_gain
withholding a student that does not pay."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import TINY, kdflow_home, tiny_config
from kdcore.config import config_from_dict
from kdcore.evaluate.verdict import Fit, advice, distillation_verdict, fit_diagnosis, paired_margin


def _pairs(both: int, only_student: int, only_baseline: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.array([True] * both + [True] * only_student + [False] * only_baseline + [False] * neither)
    b = np.array([True] * both + [False] * only_student + [True] * only_baseline + [False] * neither)
    return s, b


def test_the_same_gain_pays_on_a_large_split_and_not_on_a_small_one():
    small = distillation_verdict(*_pairs(80, 6, 3, 11))  # +3 points on 100 samples
    large = distillation_verdict(*_pairs(8000, 600, 300, 1100))  # +3 points on 10,000 samples
    assert small.gain == pytest.approx(0.03) and large.gain == pytest.approx(0.03)
    assert not small.pays and small.p_value > 0.05 and small.margin > small.gain
    assert large.pays and large.p_value < 1e-6 and large.margin < large.gain
    assert "within the noise" in small.message and "100 test samples" in small.message
    assert large.message.startswith("distillation paid") and large.advice == ""
    assert small.advice.startswith("What usually helps")


def test_a_worse_student_does_not_pay_and_gets_advice():
    v = distillation_verdict(*_pairs(60, 2, 8, 30))
    assert not v.pays and v.gain == pytest.approx(-0.06)
    assert "does not beat the plain-trained baseline" in v.message
    for tip in ("distil longer", "lower learning rate", "no hint stage", "closer teacher"):
        assert tip in v.advice
    assert set(v.as_dict()) >= {"pays", "gain", "margin", "p_value", "advice"}


def test_margin_is_the_paired_normal_interval():
    # 30 vs 12 discordant on 400: var = (42 - 18**2/400) / 400**2
    expected = 1.959964 * np.sqrt((42 - 18**2 / 400) / 400**2)
    assert paired_margin(30, 12, 400) == pytest.approx(expected, rel=1e-5)
    assert paired_margin(0, 0, 400) == 0.0
    assert paired_margin(30, 12, 400, alpha=0.01) > paired_margin(30, 12, 400)


def test_advice_mentions_the_hint_stage_only_when_there_is_one():
    plain = tiny_config(pretrain={"method": "none"})
    hinted = plain.model_copy(update={"pretrain": plain.pretrain.model_copy(update={"method": "hint"})})
    assert "no hint stage" not in advice(plain)
    assert "no hint stage" in advice(hinted) and "no hint stage" in advice(None)


def test_the_fit_says_which_limit_the_student_met():
    # bench/capacity.py's 100-epoch KD student on the full Fashion-MNIST: 96.05 % / 94.82 %
    short = fit_diagnosis(Fit(0.9605, 0.9482, 2000, 10000))
    assert "only 96.0% of 2000 training samples it learned from and 94.8% of the test samples" in short
    assert "cannot follow this teacher even where it trained" in short and "larger student" in short
    # fits where it trained (99.5 %) but follows the teacher on 93 % of new inputs: more views
    narrow = fit_diagnosis(Fit(0.995, 0.93, 2000, 10000))
    assert "it follows the teacher where it trained, not beyond" in narrow and "cache.views" in narrow
    # the larger shortfall decides: 2 points short where it trained, 1.5 or 2.5 between train and test
    assert "cannot follow" in fit_diagnosis(Fit(0.98, 0.965, 100_000, 100_000))
    assert "not beyond" in fit_diagnosis(Fit(0.98, 0.955, 100_000, 100_000))
    # ... when the samples can tell: on 500 training samples a 0.5-point difference is noise
    unclear = fit_diagnosis(Fit(0.98, 0.965, 500, 10000))
    assert "not clear whether it falls short where it trained" in unclear and "cache.views" in unclear
    v = distillation_verdict(*_pairs(60, 2, 8, 30), fit=Fit(0.9605, 0.9482, 2000, 10000))
    assert v.advice.startswith("The student agrees with its teacher on only 96.0%")
    assert "What usually helps: distil longer" in v.advice
    assert distillation_verdict(*_pairs(8000, 600, 300, 1100), fit=Fit(0.9, 0.8, 10, 10)).advice == ""  # it paid


# a student that cannot learn (tiny learning rate, one epoch) against a normally trained baseline
CRIPPLED = ["distill.train.lr=1e-6", "distill.train.max_epochs=1", 'baseline.train={"max_epochs": 2, "batch_size": 64}']


@pytest.fixture(scope="module")
def unpaid(prefect_server, tmp_path_factory):
    from flows.runner import run_pipeline

    home = tmp_path_factory.mktemp("verdict-home")
    with kdflow_home(home):
        withheld = run_pipeline(config_from_dict(copy.deepcopy(TINY), CRIPPLED + ["register.require_gain=true"]))
        registered = run_pipeline(config_from_dict(copy.deepcopy(TINY), CRIPPLED))
    return home, withheld, registered


def test_require_gain_withholds_a_student_that_does_not_pay(unpaid):
    home, withheld, _ = unpaid
    verdict = withheld["verdict"]
    assert verdict["pays"] is False and verdict["gain"] < 0
    assert withheld["registered"] == {} and withheld["registered_new"] == []
    assert "registration withheld (register.require_gain: true)" in verdict["withheld"]
    assert "What usually helps" in verdict["withheld"] and "distil longer" in verdict["advice"]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    register_run = client.get_run(withheld["stages"]["register"]["mlflow_run_id"])
    assert register_run.data.tags["kdflow.withheld"] == verdict["withheld"]
    assert register_run.info.status == "FINISHED"
    evaluate_run = client.get_run(withheld["stages"]["evaluate"]["mlflow_run_id"])
    assert evaluate_run.data.tags["kdflow.distillation_pays"] == "False"
    # the advice starts from the student's measured agreement with its teacher, logged beside it
    fit = evaluate_run.data.metrics
    assert 0 <= fit["student.train_agreement"] <= 1 and 0 <= fit["baseline.train_top1"] <= 1
    assert "teacher.train_agreement" not in fit and 0 <= fit["teacher.train_top1"] <= 1
    assert verdict["advice"].startswith(
        f"The student agrees with its teacher on only {100 * fit['student.train_agreement']:.1f}%"
    )


def test_without_require_gain_the_version_is_tagged_as_not_paying(unpaid):
    home, withheld, registered = unpaid
    assert registered["stages"]["distill"]["cached"], "same student, only the register stage differs"
    version = registered["registered"]["tiny-student"]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert [str(v.version) for v in client.search_model_versions("name='tiny-student'")] == [version] == ["1"]
    tags = client.get_model_version("tiny-student", version).tags
    assert tags["kdflow.beats_baseline"] == "False"
    assert float(tags["kdflow.gain_top1"]) == pytest.approx(registered["verdict"]["gain"], abs=1e-6)
    assert float(tags["kdflow.gain_margin"]) == pytest.approx(registered["verdict"]["margin"], abs=1e-6)
    assert float(tags["kdflow.gain_p_value"]) < 0.05  # significantly worse


def test_the_cli_and_the_prefect_summary_say_it_did_not_pay(unpaid, tmp_path):
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from typer.testing import CliRunner

    from flows.cli import app

    home, withheld, _ = unpaid
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["kdflow-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[withheld["prefect_flow_run_id"]]),
            )
        )
    assert len(artifacts) == 1
    summary = artifacts[0].data
    assert "> **Distillation did not pay: the distilled student does not beat the plain-trained baseline" in summary
    assert "distil longer" in summary and "Registration withheld (register.require_gain: true)" in summary

    cfg = config_from_dict(copy.deepcopy(TINY), CRIPPLED).model_dump(mode="json")
    (tmp_path / "unpaid.yaml").write_text(yaml.safe_dump(cfg))
    with kdflow_home(home):  # every stage cached: the same student, the verdict printed again
        out = CliRunner().invoke(app, ["run", "--quiet", str(tmp_path / "unpaid.yaml")], terminal_width=80)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "Distillation did not pay: the distilled student does not beat the plain-trained baseline" in text
    assert "What usually helps: distil longer" in text
    assert "registered anyway, tagged kdflow.beats_baseline=False" in text
