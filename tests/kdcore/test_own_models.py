"""Models from torchvision, timm and the user's own code: built for the data, pretrained weights
from the local cache (backbone loaded, head new), 1-channel stems, features by module path, and a
whole `kdflow run` from a torchvision teacher to a registered, exported torchvision student."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import kdflow_home
from kdcore.config import config_from_dict
from kdcore.errors import ConfigError, KdflowError
from kdcore.hooks import FeatureTap, probe_shapes
from kdcore.models import create_model, weights_summary
from kdcore.train.checkpoint import load_model, save_model


def make_image_folder(root: Path, per_class: int = 60, size: int = 32, seed: int = 0) -> Path:
    """``root/<class>/*.png``: 4 classes of stripes (rows, columns, diagonals, checks) at random
    phase and colour with noise, so a network learns them in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = {
        "rows": lambda p: (yy + p) % 8 < 4,
        "columns": lambda p: (xx + p) % 8 < 4,
        "diagonal": lambda p: (xx + yy + p) % 8 < 4,
        "checker": lambda p: ((xx + p) // 4 + (yy + p) // 4) % 2 == 0,
    }
    for name, pattern in patterns.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            colour = rng.uniform(80, 255, size=3)
            img = pattern(int(rng.integers(0, 8)))[..., None] * colour + rng.normal(0, 25, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


OWN = {
    "name": "own-models",
    # streamed from the files by two DataLoader workers, as data larger than memory would be
    "data": {"name": "imagefolder", "in_memory": False, "num_workers": 2, "augment": {"scale": [0.6, 1.0]}},
    "teacher": {
        "arch": "torchvision:resnet18",
        "kwargs": {"weights": None},
        "train": {"max_epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 0.001},
    },
    "student": {"arch": "torchvision:mobilenet_v3_small"},
    "distill": {
        "losses": {
            "kd": {"weight": 0.9},
            "ce": {"weight": 0.1},
            "fitnet": {"weight": 1.0, "pairs": [{"student": "features.3", "teacher": "layer2"}]},
        },
        "train": {"max_epochs": 2, "batch_size": 32, "optimizer": "adam", "lr": 0.002},
    },
    "baseline": {"enabled": False},
    "evaluate": {"min_run_time": 0.01, "throughput_batch": 16, "latency": False},
    "register": {"teacher_name": "own-teacher", "student_name": "own-student"},
    "trainer": {"num_threads": 1},
}


@pytest.fixture(scope="module")
def own_run(prefect_server, tmp_path_factory):
    from flows.runner import run_pipeline

    root = tmp_path_factory.mktemp("own-models")
    images = make_image_folder(root / "images")
    raw = copy.deepcopy(OWN)
    raw["data"]["root"] = str(images)
    with kdflow_home(root / "home") as home:
        report = run_pipeline(config_from_dict(raw))
    return home, report


def test_torchvision_teacher_to_registered_exported_torchvision_student(own_run):
    from mlflow import MlflowClient

    home, report = own_run
    assert report["stages"]["features"]["cached"] is False
    # 4 classes: chance is 0.25. The student is not asked to learn in these few steps: the running
    # batch-norm statistics of torchvision's MobileNetV3 lag its weights, and it evaluates near chance
    assert report["models"]["teacher"]["top1"] > 0.6, report["models"]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    for name in ("own-teacher", "own-student"):
        version = client.get_model_version(name, report["registered"][name])
        assert version.status == "READY"
    distill_run = report["stages"]["distill"]["mlflow_run_id"]
    fitnet = client.get_metric_history(distill_run, "train_fitnet")
    assert len(fitnet) == 2 and all(np.isfinite(m.value) for m in fitnet), "the named-layer pair was trained"

    export = report["export"]
    assert export["max_abs_diff"] <= 1e-4 and Path(export["path"]).is_file()
    student = load_model(report["artifacts"]["distill"]).eval()
    assert student.kdflow_spec["arch"] == "torchvision:mobilenet_v3_small"
    exported = torch.jit.load(export["path"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(exported(x), student(x), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# torchvision: weights from the local cache, grey inputs


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    """An empty local torch cache (no network is used anywhere in these tests)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _cached_resnet18(torch_home: Path) -> dict[str, torch.Tensor]:
    """What ``IMAGENET1K_V1`` would leave in the hub cache: a 1000-class resnet18 state_dict."""
    import torchvision

    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / "resnet18-f37072fd.pth")
    return state


def test_cached_weights_load_the_backbone_and_a_new_head_for_grey_inputs(torch_home):
    state = _cached_resnet18(torch_home)
    model = create_model("torchvision:resnet18", in_channels=1, num_classes=5, weights="IMAGENET1K_V1")
    info = model.kdflow_weights
    assert info["new"] == ["fc.bias", "fc.weight"] and info["ignored"] == ["fc.bias", "fc.weight"]
    assert "layer3.1.conv2.weight" in info["loaded"] and info["stem"] == "conv1"
    summary = weights_summary(info)  # what the teacher stage records
    assert summary["new_tensors"] == ["fc.bias", "fc.weight"] and summary["loaded_tensors"] == len(state) - 2
    assert model.fc.out_features == 5
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    # the grey stem: one input channel whose kernel is the sum of the RGB kernels
    assert model.conv1.in_channels == 1
    assert torch.allclose(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    grey = torch.rand(2, 1, 32, 32)
    rgb = create_model("torchvision:resnet18", in_channels=3, num_classes=5, weights="IMAGENET1K_V1")
    rgb.fc.load_state_dict(model.fc.state_dict())
    with torch.no_grad():  # a grey image gives what the RGB network gives on it repeated three times
        assert torch.allclose(model.eval()(grey), rgb.eval()(grey.repeat(1, 3, 1, 1)), atol=1e-4)


def test_weights_not_in_the_cache_fail_before_any_work_naming_where_it_looked(torch_home):
    from kdcore.preflight import preflight

    cfg = config_from_dict({"teacher": {"arch": "torchvision:resnet18", "kwargs": {"weights": "IMAGENET1K_V1"}}})
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    msg = str(err.value)
    assert "teacher.arch" in msg and "ResNet18_Weights.IMAGENET1K_V1 are not in the local torch hub cache" in msg
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg and "download: true" in msg
    with pytest.raises(KdflowError, match="unknown weights 'IMAGENET9'; ResNet18_Weights has DEFAULT, IMAGENET1K_V1"):
        create_model("torchvision:resnet18", in_channels=3, num_classes=5, weights="IMAGENET9")


def test_a_saved_model_rebuilds_without_its_pretrained_weights(torch_home, tmp_path):
    _cached_resnet18(torch_home)
    model = create_model("torchvision:resnet18", in_channels=3, num_classes=4, weights="IMAGENET1K_V1").eval()
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    (torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").unlink()  # gone, e.g. on another machine
    again = load_model(path).eval()
    assert again.kdflow_spec == model.kdflow_spec
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_weights_from_a_state_dict_file(tmp_path):
    import torchvision

    source = torchvision.models.mobilenet_v3_small(num_classes=1000)
    path = tmp_path / "mnv3.pth"
    torch.save({"epoch": 9, "model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = create_model("torchvision:mobilenet_v3_small", in_channels=3, num_classes=7, weights=str(path))
    assert model.kdflow_weights["new"] == ["classifier.3.bias", "classifier.3.weight"]
    assert torch.equal(model.features[4].block[0][0].weight, source.features[4].block[0][0].weight)


def test_unknown_names_and_kwargs_say_what_exists():
    with pytest.raises(KdflowError, match=r"unknown model 'torchvision:resnet19'.*did you mean resnet18"):
        create_model("torchvision:resnet19", in_channels=3, num_classes=5)
    with pytest.raises(KdflowError, match=r"model 'torchvision:resnet18': TypeError: .*'widht'"):
        create_model("torchvision:resnet18", in_channels=3, num_classes=5, widht=3)
    with pytest.raises(KdflowError, match="unknown model source 'hf' in 'hf:bert'; sources: python:NAME"):
        create_model("hf:bert", in_channels=3, num_classes=5)


def test_vit_needs_the_image_size_of_the_data():
    from kdcore.preflight import preflight_with_data

    cfg = config_from_dict({"teacher": {"arch": "torchvision:vit_b_16"}, "student": {"arch": "cnn_tiny"}})
    with pytest.raises(ConfigError, match=r"teacher.arch: 'torchvision:vit_b_16' cannot take .*224.*image_size"):
        preflight_with_data(cfg, (3, 32, 32), 4, example=torch.zeros(2, 3, 32, 32), in_channels=3)
    vit = create_model("torchvision:vit_b_16", in_channels=3, num_classes=4, image_size=32)
    shapes = probe_shapes(vit, ["encoder.layers.encoder_layer_6"], torch.zeros(2, 3, 32, 32))
    assert shapes == {"encoder.layers.encoder_layer_6": (5, 768)}  # 4 patches + the class token


def test_features_by_module_path_and_a_useful_message_for_a_wrong_one():
    model = create_model("torchvision:mobilenet_v3_small", in_channels=3, num_classes=4)
    assert probe_shapes(model, ["features.3", "features.8"], torch.zeros(2, 3, 32, 32)) == {
        "features.3": (24, 4, 4),
        "features.8": (48, 2, 2),
    }
    with pytest.raises(KdflowError) as err:
        FeatureTap(model, ["features.33"])
    msg = str(err.value)
    assert "top-level modules: features, avgpool, classifier" in msg
    assert "features.0, features.1" in msg and "features.12" in msg and "features.3.block" not in msg
    assert len(msg) < 800, "a big model's paths are summarised, not listed whole"


# ---------------------------------------------------------------------------------------------
# timm


def test_timm_model_for_grey_inputs_with_features_by_path():
    pytest.importorskip("timm", reason="the timm extra is installed by `make install`")
    net = create_model("timm:resnet10t", in_channels=1, num_classes=3)
    assert net.kdflow_spec["arch"] == "timm:resnet10t"
    assert probe_shapes(net, ["layer2"], torch.zeros(2, 1, 32, 32))["layer2"][0] == 128
    vit = create_model("timm:vit_tiny_patch16_224", in_channels=3, num_classes=3, img_size=32)
    assert probe_shapes(vit, ["blocks.6"], torch.zeros(2, 3, 32, 32)) == {"blocks.6": (5, 192)}
    from kdcore.preflight import preflight_with_data

    cfg = config_from_dict({"teacher": {"arch": "timm:vit_tiny_patch16_224"}, "student": {"arch": "cnn_tiny"}})
    with pytest.raises(ConfigError, match=r"Input height \(32\) doesn't match model \(224\).*needs kwargs.img_size"):
        preflight_with_data(cfg, (3, 32, 32), 3, example=torch.zeros(2, 3, 32, 32), in_channels=3)
    with pytest.raises(KdflowError, match=r"unknown model 'timm:resnet10tt'.*did you mean"):
        create_model("timm:resnet10tt", in_channels=1, num_classes=3)


def test_timm_missing_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now fails as if it were not installed
    with pytest.raises(KdflowError, match=r"needs the timm package.*pip install 'kdflow\[timm\]'"):
        create_model("timm:resnet10t", in_channels=1, num_classes=3)


# ---------------------------------------------------------------------------------------------
# python:MODULE:FACTORY


def test_python_factory_builds_the_users_model():
    net = create_model("python:plugins_pkg.models:make_net", in_channels=1, num_classes=3, width=4)
    assert net.kdflow_spec == {
        "arch": "python:plugins_pkg.models:make_net",
        "in_channels": 1,
        "num_classes": 3,
        "kwargs": {"width": 4},
    }
    assert net.head.out_features == 3 and net.body.conv1.in_channels == 1


@pytest.mark.parametrize(
    "arch, kwargs, needle",
    [
        (
            "python:plugins_pkg.no_such_module:make_net",
            {},
            "module 'plugins_pkg.no_such_module' cannot be imported (ModuleNotFoundError",
        ),
        (
            "python:plugins_pkg.models:make_nett",
            {},
            "module 'plugins_pkg.models' has no attribute 'make_nett'; the "
            "functions and classes it defines: broken, fixed_head, make_net, no_channels",
        ),
        ("python:plugins_pkg.models:NOT_CALLABLE", {}, "plugins_pkg.models.NOT_CALLABLE is a int, not a callable"),
        ("python:plugins_pkg.models:not_a_module", {}, "returned a list, not a torch.nn.Module"),
        ("python:plugins_pkg.models:no_channels", {}, "must accept in_channels and num_classes"),
        (
            "python:plugins_pkg.models:make_net",
            {"depth": 3},
            "does not accept parameter 'depth' (did you mean 'width'?); accepted parameters: width",
        ),
        ("python:plugins_pkg.models", {}, "expected python:MODULE:FACTORY"),
        (
            "python:plugins_pkg.models:broken",
            {},
            "building it failed: ValueError: this factory cannot build a net for 1 channels",
        ),
    ],
)
def test_python_factory_errors_are_one_clear_message(arch, kwargs, needle):
    with pytest.raises(KdflowError) as err:
        create_model(arch, in_channels=1, num_classes=3, **kwargs)
    assert needle in str(err.value) and repr(arch) in str(err.value)


@pytest.mark.parametrize(
    "arch, needle",
    [
        ("python:plugins_pkg.models:returns_tuple", "on 2 samples it returned a tuple"),
        ("python:plugins_pkg.models:fixed_head", r"on 2 samples it returned shape \(2, 10\)"),
    ],
)
def test_a_model_whose_output_is_not_the_datas_logits_fails_validation(arch, needle):
    """`kdflow validate` runs both models on two samples: a student that returns a tuple or ignores
    the number of classes stops there, not after the teacher trained."""
    from kdcore.config import PipelineConfig
    from kdcore.errors import ConfigError
    from kdcore.preflight import preflight_with_data

    cfg = PipelineConfig.model_validate({"student": {"arch": arch}})
    with pytest.raises(ConfigError, match=r"student.arch: .* must return one tensor of logits \[N, 3\].*" + needle):
        preflight_with_data(cfg, (1, 8, 8), 3, example=torch.randn(2, 1, 8, 8))
    preflight_with_data(PipelineConfig(), (1, 8, 8), 3, example=torch.randn(2, 1, 8, 8))  # the default models pass


@pytest.mark.parametrize("section, key", [("student", "num_classes"), ("teacher", "in_channels")])
def test_kwargs_that_kdflow_sets_from_the_data_are_refused(section, key):
    from kdcore.config import load_config
    from kdcore.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"{section}.kwargs.{key} = 10: kdflow sets {key} from the data"):
        load_config(None, [f'{section}.kwargs={{"{key}": 10}}'])
