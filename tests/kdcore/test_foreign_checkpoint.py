"""`teacher.checkpoint` from any training code: a plain state_dict (safetensors or torch.save),
DDP's `module.` prefix and `{"state_dict": ...}` wrappers removed, a pickled whole model refused.
The pipeline run here uses only the user's own pieces: a dataset and a loss registered through
`imports:`, `python:` teacher and student, and a teacher trained outside kdflow."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F
from typer.testing import CliRunner

from conftest import kdflow_home
from kdcore.config import config_from_dict
from kdcore.errors import CheckpointError
from kdcore.models import create_model
from kdcore.train.checkpoint import load_teacher, read_state_dict, save_model


def _net(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("python:plugins_pkg.models:make_net", in_channels=1, num_classes=3, width=width)


def test_ddp_prefix_and_wrappers_are_removed(tmp_path):
    net = _net()
    state = net.state_dict()
    ddp = {f"module.{k}": v for k, v in state.items()}
    cases = {
        "wrapped.pth": {"epoch": 12, "state_dict": ddp, "optimizer": {"lr": 0.1}, "best_acc": 0.93},
        "model.pt": {"model": ddp, "args": ["--lr", "0.1"]},
        "plain.pt": state,
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
    save_file({k: v.contiguous() for k, v in ddp.items()}, str(tmp_path / "ddp.safetensors"))
    for name in [*cases, "ddp.safetensors"]:
        loaded = read_state_dict(tmp_path / name)
        assert loaded.keys() == state.keys(), name
        assert all(torch.equal(loaded[k], state[k]) for k in state), name


def test_a_pickled_whole_model_is_refused_saying_how_to_save_a_state_dict(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(_net(), path)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path)
    msg = str(err.value)
    assert "is a pickled Python object, not a state_dict" in msg and "torch.nn.modules.container.Sequential" in msg
    assert "torch.save(model.state_dict(), path)" in msg


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"\x00junk" * 40, "is corrupted or not a PyTorch/safetensors weights file"),
        (b"", r"is empty \(0 bytes\)"),
        # random bytes: the unpickler fails with whatever the bytes make of it (IndexError here)
        (np.random.default_rng(3).bytes(4096), "is corrupted or not a PyTorch/safetensors weights file"),
        ([1, 2, 3], "holds a list, not a state_dict"),
        ({"epoch": 3, "lr": 0.1}, "holds no mapping of tensor names to tensors"),
    ],
)
def test_files_that_are_no_state_dict(tmp_path, content, needle):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=needle):
        read_state_dict(path)


def test_a_state_dict_of_another_network_names_the_differences(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(_net(width=8).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_teacher(path, "python:plugins_pkg.models:make_net", {"width": 4}, 1, 3)
    msg = str(err.value)
    assert "shape mismatch" in msg and "body.conv1.weight: checkpoint (8, 1, 3, 3) vs model (4, 1, 3, 3)" in msg
    assert "teacher.arch 'python:plugins_pkg.models:make_net' with 1 input channel(s) and 3 classes" in msg


def test_kdflow_checkpoints_still_load(tmp_path):
    net = _net()
    save_model(net, tmp_path / "t.safetensors")
    again = load_teacher(tmp_path / "t.safetensors", "python:plugins_pkg.models:make_net", {"width": 4}, 1, 3)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), net.state_dict().values()))
    with pytest.raises(CheckpointError, match="does not match the configured teacher .*num_classes: checkpoint 3 vs"):
        load_teacher(tmp_path / "t.safetensors", "python:plugins_pkg.models:make_net", {"width": 4}, 1, 5)


def test_the_cli_refuses_a_pickled_model_file_as_teacher(tmp_path, monkeypatch):
    from flows.cli import app

    whole = tmp_path / "teacher.pt"
    torch.save(create_model("cnn_small", in_channels=1, num_classes=10), whole)
    monkeypatch.setenv("KDFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(
        app,
        ["run", "--set", "data.name=digits", "--set", "teacher.arch=cnn_small", "--set", f"teacher.checkpoint={whole}"],
    )
    out = result.output
    assert result.exit_code == 2, out
    assert "error:" in out and "Traceback" not in out
    assert "teacher.checkpoint" in out and "torch.save(model.state_dict(), path)" in out
    assert not (tmp_path / "home" / "runs").exists() and not (tmp_path / "home" / "mlflow.db").exists()


# ---------------------------------------------------------------------------------------------
# The pipeline with a teacher trained elsewhere and everything else from the user's own package

OWN = {
    "name": "own-everything",
    "imports": ["plugins_pkg.kd_plugins"],
    "data": {"name": "stripes", "options": {"per_class": 60}},
    "teacher": {"arch": "python:plugins_pkg.models:make_net", "kwargs": {"width": 12}},
    "student": {"arch": "python:plugins_pkg.models:make_net", "kwargs": {"width": 3}},
    "distill": {
        "losses": {"kd": {"weight": 0.5}, "tempered_mse": {"weight": 0.5}, "ce": {"weight": 0.1}},
        "train": {"max_epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 0.01},
    },
    "baseline": {"enabled": False},
    "evaluate": {"latency": False, "min_run_time": 0.01, "throughput_batch": 16},
    "register": {"teacher_name": "own-foreign-teacher", "student_name": "own-python-student"},
    "trainer": {"num_threads": 1},
}


def _train_elsewhere(data) -> torch.nn.Module:
    """A training script that knows nothing of kdflow (as under DDP: its weights get `module.` keys)."""
    from plugins_pkg.models import make_net

    torch.manual_seed(0)
    net = make_net(in_channels=1, num_classes=3, width=12)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = data.train.x, data.train.y
    for _ in range(30):
        for i in range(0, len(x), 32):
            opt.zero_grad()
            F.cross_entropy(net(x[i : i + 32]), y[i : i + 32]).backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def foreign_run(prefect_server, tmp_path_factory):
    from flows.runner import run_pipeline
    from kdcore.data import load_dataset

    root = tmp_path_factory.mktemp("foreign")
    cfg = config_from_dict(copy.deepcopy(OWN))
    data = load_dataset(cfg.data)
    net = _train_elsewhere(data)
    with torch.no_grad():
        own_top1 = float((net(data.test.x).argmax(1) == data.test.y).float().mean())
    path = root / "teacher_ddp.pth"
    torch.save({"epoch": 30, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    raw = copy.deepcopy(OWN)
    raw["teacher"]["checkpoint"] = str(path)
    with kdflow_home(root / "home") as home:
        report = run_pipeline(config_from_dict(raw))
    return home, report, own_top1


def test_a_foreign_teacher_evaluates_to_its_own_accuracy(foreign_run):
    _, report, own_top1 = foreign_run
    assert own_top1 > 0.8, "the teacher trained elsewhere learned the stripes"
    assert report["models"]["teacher"]["top1"] == pytest.approx(own_top1, abs=1e-9)
    assert report["stages"]["teacher"]["cached"] is False


def test_the_users_own_loss_dataset_and_student_run_registered_and_exported(foreign_run):
    from mlflow import MlflowClient

    home, report, _ = foreign_run
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    distill = report["stages"]["distill"]["mlflow_run_id"]
    assert len(client.get_metric_history(distill, "train_tempered_mse")) == 2, "the plugin loss was trained and logged"
    version = client.get_model_version("own-python-student", report["registered"]["own-python-student"])
    assert version.status == "READY"
    assert report["export"]["max_abs_diff"] <= 1e-4 and Path(report["export"]["path"]).is_file()
    assert report["models"]["student"]["top1"] > 1 / 3, report["models"]
