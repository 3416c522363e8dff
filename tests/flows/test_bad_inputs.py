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

TINY_ARGS = [
    "--set",
    "data.name=digits",
    "--set",
    "teacher.arch=cnn_small",
    "--set",
    "student.arch=cnn_tiny",
    "--set",
    "teacher.train.max_epochs=1",
    "--set",
    "distill.train.max_epochs=1",
    "--set",
    "evaluate.latency=false",
]


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
    np.savez(
        path, x_train=np.zeros((40, 8, 8), np.uint8), y_train=np.arange(40) % 4, class_names=np.array(["a", "b", "c"])
    )
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


def unreadable(tmp: Path) -> Path:
    """A config file this process cannot read: no permissions, or (as root, who may read anything) a
    link to /proc/self/mem, whose first bytes are unmapped memory (EIO)."""
    path = tmp / "locked.yaml"
    if os.geteuid() == 0:
        path.symlink_to("/proc/self/mem")
    else:
        write(path, "name: x\n").chmod(0)
    return path


FITNET = Path(__file__).resolve().parents[2] / "configs" / "methods" / "fitnet.yaml"
BLOCK2_TO_BLOCK3_NO_CONNECTOR = "pretrain.pairs=[{student: block2, teacher: block3, connector: none}]"

# (id, CLI arguments builder, extra env, texts the message must hold: the field and the value, "{t}"
# standing for the test's tmp_path)
Case = tuple[str, Callable[[Path], list[str]], Optional[dict], tuple[str, ...]]
CASES: list[Case] = [
    # config files
    (
        "malformed-yaml",
        lambda t: [str(write(t / "c.yaml", "data: {name: digits\nteacher: [\n"))],
        None,
        ("config file '{t}/c.yaml' is not valid YAML: line 2, column 8: expected ',' or '}'",),
    ),
    (
        "config-not-a-mapping",
        lambda t: [str(write(t / "c.yaml", "- a\n- b\n"))],
        None,
        ("config file '{t}/c.yaml' must hold a mapping of sections", 'got list ["a", "b"]'),
    ),
    (
        "config-a-scalar",
        lambda t: [str(write(t / "c.yaml", "42\n"))],
        None,
        ("config file '{t}/c.yaml' must hold a mapping of sections", "got int 42"),
    ),
    ("missing-config-file", lambda t: [str(t / "nope.yaml")], None, ("config file '{t}/nope.yaml' does not exist",)),
    ("config-is-a-directory", lambda t: [str(t)], None, ("config file '{t}' is a directory",)),
    ("config-unreadable", lambda t: [str(unreadable(t))], None, ("config file '{t}/locked.yaml' cannot be read",)),
    (
        "config-not-utf8",
        lambda t: (
            [str(t / "junk.yaml")] if (t / "junk.yaml").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01" * 8) else []
        ),
        None,
        ("config file '{t}/junk.yaml' is not UTF-8 text (byte 0xff at offset 0)",),
    ),
    ("config-empty", lambda t: [str(write(t / "empty.yaml", ""))], None, ("config file '{t}/empty.yaml' is empty",)),
    (
        "config-only-comments",
        lambda t: [str(write(t / "c.yaml", "# teacher: {arch: cnn_small}\n\n  # \n"))],
        None,
        ("config file '{t}/c.yaml' holds no settings (only comments or blank lines)",),
    ),
    (
        "config-duplicate-key",
        lambda t: [str(write(t / "c.yaml", "data:\n  name: digits\ndata:\n  name: mnist5k\n"))],
        None,
        ("config file '{t}/c.yaml' is not valid YAML: line 3, column 1: duplicate key 'data' (first given on line 1)",),
    ),
    (
        "config-python-tag",
        lambda t: [str(write(t / "c.yaml", "data: !!python/object/apply:os.system ['true']\n"))],
        None,
        (
            "config file '{t}/c.yaml' is not valid YAML: line 1, column 7: the tag "
            "'!!python/object/apply:os.system' is not allowed",
        ),
    ),
    # config fields
    (
        "unknown-key",
        lambda t: ["--set", "distill.temprature=4"],
        None,
        ("distill.temprature: unknown key (did you mean 'temperature'?); valid keys here: temperature, losses, train",),
    ),
    (
        "unknown-section",
        lambda t: ["--set", "optimiser.lr=1"],
        None,
        ("optimiser: unknown key; valid keys here: imports, name, data, teacher, student",),
    ),
    (
        "wrong-type",
        lambda t: ["--set", "teacher.train.max_epochs=many"],
        None,
        ('teacher.train.max_epochs = "many": Input should be a valid integer',),
    ),
    (
        "wrong-type-bool",
        lambda t: ["--set", "evaluate.latency=maybe"],
        None,
        ('evaluate.latency = "maybe": Input should be a valid boolean',),
    ),
    ("section-set-to-a-scalar", lambda t: ["--set", "data=5"], None, ("data = 5: Input should be a valid dictionary",)),
    (
        "zero-batch-size",
        lambda t: ["--set", "distill.train.batch_size=0"],
        None,
        ("distill.train.batch_size = 0: Input should be greater than 0",),
    ),
    (
        "negative-lr",
        lambda t: ["--set", "teacher.train.lr=-0.1"],
        None,
        ("teacher.train.lr = -0.1: Input should be greater than 0",),
    ),
    (
        "negative-temperature",
        lambda t: ["--set", "distill.temperature=-4"],
        None,
        ("distill.temperature = -4: Input should be greater than 0",),
    ),
    (
        "zero-loss-temperature",
        lambda t: ["--set", "distill.losses.kd.temperature=0"],
        None,
        ("distill.losses: loss 'kd': parameter 'temperature' must be a number > 0.0, got 0",),
    ),
    (
        "negative-loss-weight",
        lambda t: ["--set", "distill.losses.kd.weight=-1"],
        None,
        ("distill.losses: loss 'kd': weight must be a number >= 0, got -1",),
    ),
    # overrides
    (
        "override-without-equals",
        lambda t: ["--set", "distill.temperature"],
        None,
        ("override 'distill.temperature' is not of the form key.path=value",),
    ),
    ("override-empty-key", lambda t: ["--set", "=1"], None, ("override '=1' has an empty key",)),
    (
        "override-empty-part",
        lambda t: ["--set", "distill..temperature=1"],
        None,
        ("override 'distill..temperature=1' has an empty key",),
    ),
    (
        "override-empty-value",
        lambda t: ["--set", "data.name="],
        None,
        ("override 'data.name=' has no value after '='", "data.name=null"),
    ),
    (
        "override-into-a-scalar",
        lambda t: ["--set", "data.name.x=1"],
        None,
        ("override 'data.name.x=1': data.name is not a section (it holds \"mnist5k\")",),
    ),
    (
        "override-bad-yaml",
        lambda t: ["--set", "distill.losses={kd: [}"],
        None,
        ("override 'distill.losses={kd: [}': the value is not valid YAML: line 1, column 7",),
    ),
    (
        "override-python-tag",
        lambda t: ["--set", "data.name=!!python/object/apply:os.system [true]"],
        None,
        (
            "override 'data.name=!!python/object/apply:os.system [true]': the value is not valid YAML",
            "the tag '!!python/object/apply:os.system' is not allowed",
        ),
    ),
    # names the registries do not know
    (
        "unknown-model",
        lambda t: ["--set", "student.arch=resnet9000"],
        None,
        ("student.arch: unknown model 'resnet9000'; known models:",),
    ),
    (
        "unknown-model-kwarg",
        lambda t: ["--set", "student.kwargs.depth=3"],
        None,
        ("student.arch: model 'cnn_tiny' does not accept parameter 'depth'; accepted parameters: dropout",),
    ),
    (
        "unknown-loss",
        lambda t: ["--set", "distill.losses.kdd.weight=1"],
        None,
        ("distill.losses: unknown loss function 'kdd'; known loss functions:",),
    ),
    (
        "unknown-dataset",
        lambda t: ["--set", "data.name=imagenet22k"],
        None,
        ("data.name: unknown dataset 'imagenet22k'; known datasets:",),
    ),
    (
        "unknown-device",
        lambda t: ["--set", "trainer.device=tpu"],
        None,
        ("trainer.device 'tpu' is not one of auto, cpu, cuda, cuda:N, mps",),
    ),
    (
        "missing-feature-path",
        lambda t: ["--set", "distill.losses.fitnet.pairs=[{student: block7, teacher: block2}]"],
        None,
        ("student module path(s) 'block7' not found in cnn_tiny; valid paths:",),
    ),
    (
        "feature-shape-mismatch",
        lambda t: (
            TINY_ARGS
            + [
                "--set",
                "distill.losses.fitnet.pairs=[{student: block1, teacher: block2}]",
                "--set",
                "distill.losses.fitnet.connector=none",
            ]
        ),
        None,
        (
            "distill.losses: loss 'fitnet', pair student 'block1' -> teacher 'block2': student feature shape (8, 4, 4) "
            "and teacher feature shape (32, 2, 2) differ: a connector is needed",
        ),
    ),
    # paths
    (
        "dataset-root-missing-files",
        lambda t: ["--set", "data.name=fashion_mnist", "--set", f"data.root={t / 'nowhere'}"],
        None,
        ("Fashion-MNIST files not found", "Looked in:\n  {t}/nowhere\n"),
    ),
    (
        "dataset-truncated-file",
        lambda t: ["--set", "data.name=fashion_mnist", "--set", f"data.root={truncated_fashion(t)}"],
        None,
        ("file {t}/fashion/train-images-idx3-ubyte.gz is truncated",),
    ),
    (
        "empty-dataset",
        lambda t: ["--set", "data.name=imagefolder", "--set", f"data.root={empty_imagefolder(t)}"],
        None,
        ("no images (.png, .jpg, .jpeg, .bmp) found under {t}/imgs",),
    ),
    (
        "labels-out-of-range",
        lambda t: ["--set", "data.name=npz", "--set", f"data.root={npz_bad_labels(t)}"],
        None,
        ("dataset npz (read from {t}/mine.npz): train pool has 10 labels outside [0, 3) for 3 classes",),
    ),
    (
        "teacher-of-another-architecture",
        lambda t: TINY_ARGS + ["--set", f"teacher.checkpoint={teacher_ckpt(t, 'cnn_medium')}"],
        None,
        (
            "teacher.checkpoint {t}/cnn_medium.safetensors does not match the configured teacher",
            "arch: checkpoint 'cnn_medium' vs config/data 'cnn_small'",
        ),
    ),
    (
        "teacher-checkpoint-corrupted",
        lambda t: TINY_ARGS + ["--set", f"teacher.checkpoint={corrupt_ckpt(t)}"],
        None,
        ("teacher.checkpoint: checkpoint {t}/cnn_small.safetensors is corrupted",),
    ),
    (
        "teacher-checkpoint-missing",
        lambda t: ["--set", f"teacher.checkpoint={t / 'gone.safetensors'}"],
        None,
        ("teacher.checkpoint: file '{t}/gone.safetensors'",),
    ),
    (
        "teacher-checkpoint-a-directory",
        lambda t: ["--set", f"teacher.checkpoint={t}"],
        None,
        ("teacher.checkpoint: file '{t}'",),
    ),
    (
        "report-into-a-read-only-place",
        lambda t: TINY_ARGS + ["--report", "/proc/kdflow/report.json"],
        None,
        ("--report '/proc/kdflow/report.json' is not writable: cannot create files in '/proc'",),
    ),
    ("report-a-directory", lambda t: TINY_ARGS + ["--report", str(t)], None, ("--report '{t}' is a directory",)),
    # environment
    (
        "unreachable-mlflow",
        lambda t: TINY_ARGS,
        {"MLFLOW_TRACKING_URI": "http://user:s3cret@127.0.0.1:9/"},
        ("MLflow tracking server http://***@127.0.0.1:9/ is unreachable",),
    ),
    (
        "mlflow-uri-unknown-scheme",
        lambda t: TINY_ARGS,
        {"MLFLOW_TRACKING_URI": "garbage://user:s3cret@host/x"},
        ("MLFLOW_TRACKING_URI garbage://***@host/x: MLflow has no store for the scheme 'garbage'",),
    ),
    (
        "unreachable-prefect",
        lambda t: TINY_ARGS,
        {"PREFECT_API_URL": "http://127.0.0.1:9/api"},
        ("Prefect server http://127.0.0.1:9/api (PREFECT_API_URL) is unreachable",),
    ),
    (
        "prefect-url-not-a-url",
        lambda t: TINY_ARGS,
        {"PREFECT_API_URL": "notaurl"},
        ("Prefect server notaurl (PREFECT_API_URL) is unreachable",),
    ),
    (
        "unwritable-home",
        lambda t: TINY_ARGS,
        {"KDFLOW_HOME": "/proc/kdflow-home"},
        ("KDFLOW_HOME /proc/kdflow-home is not writable",),
    ),
    (
        "home-is-a-file",
        lambda t: TINY_ARGS,
        {"KDFLOW_HOME": "{t}/c.yaml"},
        ("KDFLOW_HOME {t}/c.yaml is a file, not a directory",),
    ),
]


def check_clean_failure(result, needles: tuple[str, ...], tmp_path: Path) -> None:
    """Exit 2, the message on stderr holding every needle, once, and nothing else: no traceback."""
    err, out = result.stderr, result.stdout
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    for needle in needles:
        assert needle.replace("{t}", str(tmp_path)) in err, f"{needle!r} not in stderr:\n{err}"
    assert err.count("error:") == 1 and any(line.startswith("error: ") for line in err.splitlines()), err
    assert "Traceback" not in result.output and "error:" not in out, result.output
    assert "s3cret" not in result.output


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name, build_args, env, needles = case
    if name == "dataset-truncated-file" and not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.fail("Fashion-MNIST (Debian dataset-fashion-mnist) must be installed by `make test`")
    home = tmp_path / "home"
    monkeypatch.setenv("KDFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v.replace("{t}", str(tmp_path)))
    write(tmp_path / "c.yaml", "name: x\n")  # a file for the cases that need one in the way
    args = build_args(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["run", *args])
    check_clean_failure(result, needles, tmp_path)
    assert not home.exists() or not (home / "mlflow.db").exists(), "no MLflow store or run may be written"
    assert not (home / "runs").exists(), "no stage may have started"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == [n for n in before if n != "home"], (
        "nothing written next to the inputs"
    )


VALIDATE_CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    # the shape checks `kdflow run` makes after loading the data (issue 15, defect 5)
    (
        "feature-pair-shapes",
        [str(FITNET), "--set", BLOCK2_TO_BLOCK3_NO_CONNECTOR],
        (
            "pretrain.pairs: loss 'fitnet', pair student 'block2' -> teacher 'block3': student feature shape "
            "(16, 7, 7) "
            "and teacher feature shape (128, 4, 4) differ: a connector is needed",
        ),
    ),
    (
        "teacher-of-another-architecture",
        [*TINY_ARGS, "--set", "teacher.checkpoint={ckpt}"],
        ("teacher.checkpoint {t}/cnn_medium.safetensors does not match the configured teacher",),
    ),
    ("config-empty", ["{t}/empty.yaml"], ("config file '{t}/empty.yaml' is empty",)),
]


@pytest.mark.parametrize("case", VALIDATE_CASES, ids=[c[0] for c in VALIDATE_CASES])
def test_validate_makes_the_checks_run_makes(case, tmp_path: Path, kdhome: Path):
    _, args, needles = case
    write(tmp_path / "empty.yaml", "")
    ckpt = teacher_ckpt(tmp_path, "cnn_medium")
    result = CliRunner().invoke(
        app, ["validate", *(a.replace("{t}", str(tmp_path)).replace("{ckpt}", str(ckpt)) for a in args)]
    )
    check_clean_failure(result, needles, tmp_path)
    assert not kdhome.exists() or not any(kdhome.iterdir()), "validate writes nothing"


def test_validate_passes_the_same_pair_with_a_connector(kdhome: Path):
    ok = CliRunner().invoke(
        app, ["validate", str(FITNET), "--set", BLOCK2_TO_BLOCK3_NO_CONNECTOR.replace("none", "conv")]
    )
    assert ok.exit_code == 0, ok.output
    assert "config OK" in ok.stdout and "data mnist5k:" in ok.stdout and ok.stderr == ""


def test_bad_config_through_the_real_command_has_no_traceback(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "KDFLOW_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--set", "distill.temperature=0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.count("error:") == 1 and "distill.temperature = 0" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_cuda_requested_without_cuda(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("KDFLOW_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["run", "--set", "trainer.device=cuda"])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


@pytest.mark.parametrize("command", ["sweep", "retrain"])
def test_sweep_and_retrain_check_the_config_before_prefect_starts(command: str, tmp_path: Path, kdhome: Path):
    result = CliRunner().invoke(app, [command, str(tmp_path / "nope.yaml"), "--set", "distill.temperature=2"])
    check_clean_failure(result, ("config file '{t}/nope.yaml' does not exist",), tmp_path)
    bad_set = CliRunner().invoke(app, [command, "--set", "distill.temperature=0"])
    check_clean_failure(bad_set, ("distill.temperature = 0: Input should be greater than 0",), tmp_path)
    assert not (kdhome / "prefect-results").exists()
