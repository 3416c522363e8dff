"""Users' own losses, datasets and models registered without editing kdflow: a config's `imports:`
(imported wherever a config is validated, Prefect workers included) and the `kdflow.plugins`
entry-point group (loaded on the first lookup of an unknown name)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import kdcore.plugins
from kdcore.config import config_from_dict
from kdcore.errors import ConfigError, KdflowError
from kdcore.losses import LOSSES, KDInputs, build_objective
from kdcore.models import MODELS, create_model

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def test_imports_register_a_loss_and_a_dataset_that_take_the_section_temperature():
    cfg = config_from_dict(
        {
            "imports": ["plugins_pkg.kd_plugins"],
            "data": {"name": "stripes"},
            "distill": {"temperature": 3, "losses": {"tempered_mse": {"weight": 1}}},
        }
    )
    from kdcore.data import DATASETS, load_dataset

    assert "tempered_mse" in LOSSES and "stripes" in DATASETS
    assert cfg.distill.objective_spec() == {"tempered_mse": {"weight": 1, "temperature": 3.0}}
    objective = build_objective(cfg.distill.objective_spec())
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    total, terms = objective(KDInputs(student_logits=s, targets=torch.zeros(4, dtype=torch.long), teacher_logits=t))
    assert torch.allclose(terms["tempered_mse"], torch.mean((s / 3 - t / 3) ** 2))
    data = load_dataset(cfg.data)
    assert data.num_classes == 3 and data.in_channels == 1


def test_a_worker_that_validates_the_config_gets_the_plugins(tmp_path):
    """What a Prefect task does in a fresh worker process (tasks/stage.py): validate the config
    dict it is handed, then look names up."""
    script = (
        "from kdcore.losses import LOSSES\n"
        "from kdcore.data import DATASETS\n"
        "assert 'tempered_mse' not in LOSSES and 'stripes' not in DATASETS\n"
        "from kdcore.config import PipelineConfig\n"
        "PipelineConfig.model_validate({'imports': ['plugins_pkg.kd_plugins'], 'data': {'name': 'stripes'}})\n"
        "assert 'tempered_mse' in LOSSES and 'stripes' in DATASETS\n"
        "print('registered')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0 and "registered" in out.stdout, out.stderr


def test_an_unknown_import_fails_the_cli_with_one_message(tmp_path, monkeypatch):
    from flows.cli import app

    monkeypatch.setenv("KDFLOW_HOME", str(tmp_path / "home"))
    config = tmp_path / "cfg.yaml"
    config.write_text("imports: [no_such_plugin_pkg.kd_plugins]\ndata: {name: digits}\n")
    result = CliRunner().invoke(app, ["run", str(config)])
    out = result.output
    assert result.exit_code == 2, out
    assert out.count("error:") == 1 and "Traceback" not in out
    assert (
        "imports = [\"no_such_plugin_pkg.kd_plugins\"]: plugin module 'no_such_plugin_pkg.kd_plugins' cannot be "
        "imported (ModuleNotFoundError: No module named 'no_such_plugin_pkg')"
    ) in out
    assert not (tmp_path / "home" / "runs").exists()


def test_a_plugin_that_raises_while_importing_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin_mod.py").write_text("raise RuntimeError('forgot to set MY_TOKEN')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ConfigError,
        match=r"plugin module 'broken_plugin_mod' failed while importing "
        r"\(RuntimeError: forgot to set MY_TOKEN\)",
    ):
        config_from_dict({"imports": ["broken_plugin_mod"]})


def test_a_plugin_file_in_the_working_directory_is_found(tmp_path, monkeypatch):
    """The `kdflow` console script does not put the working directory on sys.path; plugins do."""
    (tmp_path / "cwd_plugin_mod.py").write_text(
        "from kdcore.models import MODELS\nfrom torch import nn\n"
        "@MODELS.register('cwd_linear')\n"
        "def cwd_linear(in_channels, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    config_from_dict({"imports": ["cwd_plugin_mod"]})
    assert "cwd_linear" in MODELS


@pytest.fixture()
def installed_plugin(tmp_path, monkeypatch):
    """A distribution that declares `kdflow.plugins` entry points, as `pip install my-plugin` leaves it:
    one module entry point, one callable, one that fails to import."""
    (tmp_path / "ep_demo_plugin.py").write_text(
        "from torch import nn\nfrom kdcore.models import MODELS\n"
        "@MODELS.register('ep_tiny_net')\n"
        "def ep_tiny_net(in_channels, num_classes, hidden=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n"
        "def register():\n"
        "    from kdcore.losses import LOSSES\n    from kdcore.losses.ce import CELoss\n"
        "    LOSSES.register('ep_ce')(type('EpCE', (CELoss,), {}))\n"
    )
    info = tmp_path / "kdflow_ep_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kdflow-ep-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[kdflow.plugins]\ndemo = ep_demo_plugin\ndemo_losses = ep_demo_plugin:register\nbroken = ep_missing_module\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(kdcore.plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(kdcore.plugins, "entry_point_errors", {})
    return tmp_path


def test_entry_point_plugins_register_on_the_first_unknown_name(installed_plugin):
    assert "ep_tiny_net" not in MODELS._items
    net = create_model("ep_tiny_net", in_channels=1, num_classes=3, hidden=5)  # a miss loads the entry points
    assert net(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    assert "ep_ce" in LOSSES
    with pytest.raises(KdflowError) as err:
        create_model("ep_nothing", in_channels=1, num_classes=3)
    msg = str(err.value)
    assert "unknown model 'ep_nothing'" in msg and "ep_tiny_net" in msg
    assert "plugin 'broken' did not load (ep_missing_module: ModuleNotFoundError" in msg
