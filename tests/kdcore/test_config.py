"""Config loading, overrides and the checks made before any work starts."""

from __future__ import annotations

import pytest

from kdcore.config import config_from_dict, load_config
from kdcore.errors import ConfigError
from kdcore.preflight import preflight


def test_default_config_is_valid():
    cfg = load_config("configs/default.yaml")
    preflight(cfg)
    assert cfg.data.name == "mnist5k"


def test_override_sets_typed_values():
    cfg = config_from_dict({}, ["distill.temperature=2.5", "distill.losses.kd.weight=0.5", "baseline.enabled=false"])
    assert cfg.distill.temperature == 2.5
    assert cfg.distill.objective_spec()["kd"] == {"weight": 0.5, "temperature": 2.5}
    assert cfg.baseline.enabled is False


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"distill\.temprature: unknown key"):
        config_from_dict({"distill": {"temprature": 3}})


def test_negative_temperature_is_named_with_its_value():
    with pytest.raises(ConfigError, match=r"distill\.temperature = -1.*greater than 0"):
        config_from_dict({}, ["distill.temperature=-1"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"teacher\.train\.max_epochs = \"many\""):
        config_from_dict({"teacher": {"train": {"max_epochs": "many"}}})


def test_malformed_override():
    with pytest.raises(ConfigError, match="key.path=value"):
        config_from_dict({}, ["distill.temperature"])


def test_unknown_model_lists_known_models():
    cfg = config_from_dict({"student": {"arch": "resnet9000"}})
    with pytest.raises(ConfigError, match=r"student\.arch: unknown model .*'resnet9000'.*resnet8x4"):
        preflight(cfg)


def test_unknown_loss_and_dataset_are_listed():
    cfg = config_from_dict({"data": {"name": "imagenet-xl"}, "distill": {"losses": {"kdd": {}}}})
    with pytest.raises(ConfigError) as exc:
        preflight(cfg)
    msg = str(exc.value)
    assert "data.name" in msg and "fashion_mnist" in msg
    assert "distill.losses" in msg and "'kdd'" in msg and "fitnet" in msg


def test_missing_feature_path_lists_valid_paths():
    cfg = config_from_dict(
        {"distill": {"losses": {"ce": {}, "fitnet": {"pairs": [{"student": "block9", "teacher": "block2"}]}}}}
    )
    with pytest.raises(ConfigError, match=r"student module path\(s\) 'block9' not found .*block1"):
        preflight(cfg)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_hint_pretraining_needs_pairs():
    with pytest.raises(ConfigError, match="needs at least one pair"):
        config_from_dict({"pretrain": {"method": "hint"}})
