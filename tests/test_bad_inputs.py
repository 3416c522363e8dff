"""The bad-input catalogue: each case goes through the CLI, exits non-zero with one clear message
and no traceback, before any work where possible, and leaves no MLflow run or version behind."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from kdcore.models import create_model
from kdcore.train.checkpoint import save_model

TINY_ARGS = ["--set", "data.name=digits", "--set", "teacher.arch=cnn_small", "--set", "student.arch=cnn_tiny",
             "--set", "teacher.train.max_epochs=1", "--set", "distill.train.max_epochs=1",
             "--set", "evaluate.latency=false"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def teacher_ckpt(tmp: Path, arch: str = "cnn_small", in_channels: int = 1) -> Path:
    path = tmp / f"{arch}.safetensors"
    save_model(create_model(arch, in_channels=in_channels, num_classes=10), path)
    return path


def corrupt_ckpt(tmp: Path) -> Path:
    path = teacher_ckpt(tmp)
    path.write_bytes(b"not a safetensors file at all" * 4)
    return path


def npz_bad_labels(tmp: Path) -> Path:
    path = tmp / "mine.npz"
    np.savez(path, x_train=np.zeros((40, 8, 8), np.uint8), y_train=np.arange(40) % 4,
             class_names=np.array(["a", "b", "c"]))
    return path


def truncated_fashion(tmp: Path) -> Path:
    import gzip
    import shutil

    root = tmp / "fashion"
    root.mkdir()
    src = Path("/usr/share/datasets/fashion-mnist")
    for f in src.glob("*.gz"):
        shutil.copy(f, root / f.name)
    images = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())[:50_000]
    images.write_bytes(gzip.compress(raw))
    return root


def empty_imagefolder(tmp: Path) -> Path:
    for c in ("cats", "dogs"):
        (tmp / "imgs" / c).mkdir(parents=True)
    return tmp / "imgs"


# (id, CLI arguments builder, extra env, expected text in the message)
Case = tuple[str, Callable[[Path], list[str]], Optional[dict], str]
CASES: list[Case] = [
    ("malformed-yaml", lambda t: [str(write(t / "c.yaml", "data: {name: digits\nteacher: [\n"))], None,
     "is not valid YAML"),
    ("config-not-a-mapping", lambda t: [str(write(t / "c.yaml", "- a\n- b\n"))], None, "must hold a mapping"),
    ("missing-config-file", lambda t: [str(t / "nope.yaml")], None, "does not exist"),
    ("unknown-key", lambda t: ["--set", "distill.temprature=4"], None, "distill.temprature: unknown key"),
    ("unknown-section", lambda t: ["--set", "optimiser.lr=1"], None, "optimiser: unknown key"),
    ("wrong-type", lambda t: ["--set", "teacher.train.max_epochs=many"], None, 'teacher.train.max_epochs = "many"'),
    ("zero-batch-size", lambda t: ["--set", "distill.train.batch_size=0"], None, "distill.train.batch_size = 0"),
    ("negative-lr", lambda t: ["--set", "teacher.train.lr=-0.1"], None, "teacher.train.lr = -0.1"),
    ("negative-temperature", lambda t: ["--set", "distill.temperature=-4"], None, "distill.temperature = -4"),
    ("zero-loss-temperature", lambda t: ["--set", "distill.losses.kd.temperature=0"], None, "temperature"),
    ("negative-loss-weight", lambda t: ["--set", "distill.losses.kd.weight=-1"], None, "weight"),
    ("bad-override", lambda t: ["--set", "distill.temperature"], None, "key.path=value"),
    ("unknown-model", lambda t: ["--set", "student.arch=resnet9000"], None,
     "unknown model 'resnet9000'; known models:"),
    ("unknown-model-kwarg", lambda t: ["--set", "student.kwargs.depth=3"], None, "depth"),
    ("unknown-loss", lambda t: ["--set", "distill.losses.kdd.weight=1"], None, "'kdd'"),
    ("unknown-dataset", lambda t: ["--set", "data.name=imagenet22k"], None, "unknown dataset 'imagenet22k'"),
    ("unknown-device", lambda t: ["--set", "trainer.device=tpu"], None, "trainer.device"),
    ("missing-feature-path", lambda t: ["--set", "distill.losses.fitnet.pairs=[{student: block7, teacher: block2}]"],
     None, "'block7' not found"),
    ("feature-shape-mismatch", lambda t: TINY_ARGS + [
        "--set", "distill.losses.fitnet.pairs=[{student: block1, teacher: block2}]",
        "--set", "distill.losses.fitnet.connector=none"], None, "a connector is needed"),
    ("dataset-root-missing-files", lambda t: ["--set", "data.name=fashion_mnist", "--set", f"data.root={t / 'nowhere'}"],
     None, "Looked in"),
    ("dataset-truncated-file", lambda t: ["--set", "data.name=fashion_mnist", "--set",
                                          f"data.root={truncated_fashion(t)}"], None, "truncated"),
    ("empty-dataset", lambda t: ["--set", "data.name=imagefolder", "--set", f"data.root={empty_imagefolder(t)}"],
     None, "no images"),
    ("labels-out-of-range", lambda t: ["--set", "data.name=npz", "--set", f"data.root={npz_bad_labels(t)}"], None,
     "outside [0, 3)"),
    ("teacher-of-another-architecture", lambda t: TINY_ARGS + ["--set", f"teacher.checkpoint={teacher_ckpt(t, 'cnn_medium')}"],
     None, "does not match the configured teacher"),
    ("teacher-checkpoint-corrupted", lambda t: TINY_ARGS + ["--set", f"teacher.checkpoint={corrupt_ckpt(t)}"], None,
     "corrupted"),
    ("teacher-checkpoint-missing", lambda t: ["--set", f"teacher.checkpoint={t / 'gone.safetensors'}"], None,
     "does not exist"),
    ("unreachable-mlflow", lambda t: TINY_ARGS, {"MLFLOW_TRACKING_URI": "http://user:s3cret@127.0.0.1:9/"},
     "MLflow tracking server http://***@127.0.0.1:9/ is unreachable"),
    ("unreachable-prefect", lambda t: TINY_ARGS, {"PREFECT_API_URL": "http://127.0.0.1:9/api"},
     "Prefect server http://127.0.0.1:9/api (PREFECT_API_URL) is unreachable"),
    ("unwritable-home", lambda t: TINY_ARGS, {"KDFLOW_HOME": "/proc/kdflow-home"}, "is not writable"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name, build_args, env, needle = case
    if name == "dataset-truncated-file" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.fail("Fashion-MNIST (Debian dataset-fashion-mnist) must be installed by `make test`")
    home = tmp_path / "home"
    monkeypatch.setenv("KDFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    args = build_args(tmp_path)
    result = CliRunner().invoke(app, ["run", *args])
    out = result.output
    assert result.exit_code == 2, out
    assert needle in out, out
    assert "error:" in out and "Traceback" not in out
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert not (home / "mlflow.db").exists(), "no MLflow store or run may be written for bad input"
    assert not (home / "runs").exists(), "no stage may have started"
    secret_free = "s3cret" not in out
    assert secret_free


def test_bad_config_through_the_real_command_has_no_traceback(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "KDFLOW_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--set", "distill.temperature=0"],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("error:") == 1 and "distill.temperature = 0" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_cuda_requested_without_cuda(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("KDFLOW_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["run", "--set", "trainer.device=cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output
