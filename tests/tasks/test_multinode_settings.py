"""``trainer.nnodes`` / ``trainer.rdzv_endpoint``: torchrun's settings for a stage that spans machines,
checked in the config, passed to the launcher, and counted in fingerprints only where they change
the result."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY
from kdcore.config import config_from_dict
from kdcore.errors import ConfigError
from tasks.fingerprints import fingerprint


def _cfg(**trainer):
    raw = copy.deepcopy(TINY)
    raw["trainer"] = trainer
    return config_from_dict(raw)


def test_several_machines_need_a_rendezvous_endpoint():
    with pytest.raises(ConfigError, match=r"trainer.nnodes = 2 needs trainer.rdzv_endpoint"):
        _cfg(nnodes=2)
    assert _cfg(nnodes=2, rdzv_endpoint="host0:29400").trainer.nnodes == 2


def test_fingerprint_counts_the_machines_not_where_they_meet():
    ups = {"pretrain": {"fingerprint": "p"}, "features": {"fingerprint": "f"}, "teacher": {"fingerprint": "t"}}
    one = fingerprint("distill", _cfg(), "d", ups)
    assert fingerprint("distill", _cfg(nnodes=1, rdzv_endpoint="elsewhere:1"), "d", ups) == one
    two_a = fingerprint("distill", _cfg(nnodes=2, rdzv_endpoint="a:1"), "d", ups)
    assert two_a != one
    assert fingerprint("distill", _cfg(nnodes=2, rdzv_endpoint="b:2"), "d", ups) == two_a


def test_a_training_stage_hands_the_settings_to_torchrun(monkeypatch):
    import tasks.stage as stage

    seen = {}

    def fake_run_distributed(fn, *args, **kwargs):
        seen.update(kwargs)
        return fn(*args)

    monkeypatch.setattr(stage, "run_distributed", fake_run_distributed)
    cfg = _cfg(devices=2, nnodes=2, rdzv_endpoint="host0:29400")
    env = SimpleNamespace(device=torch.device("cpu"))
    call = stage.StageCall("distill", cfg, None, env, None, "", "", {}, Path("."), None, training=True)  # type: ignore[arg-type]
    assert call.timed(lambda x: x + 1, 41) == 42
    assert seen == {"world_size": 2, "device": torch.device("cpu"), "nnodes": 2, "rdzv_endpoint": "host0:29400"}
    untrained = stage.StageCall("evaluate", cfg, None, env, None, "", "", {}, Path("."), None)  # type: ignore[arg-type]
    seen.clear()
    assert untrained.timed(lambda x: x * 2, 21) == 42 and seen == {}
