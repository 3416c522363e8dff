"""Stage fingerprints: exactly what determines each stage's result (the Prefect cache key).

Each stage's declaration (tasks/spec.py) names the reader below that picks the config it depends
on; the fingerprint hashes that, the fingerprints of the stage's inputs and the data fingerprint.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from kdcore.config import PipelineConfig
from kdcore.fingerprint import file_sha256, stage_fingerprint
from kdcore.stages import teacher_paths

if TYPE_CHECKING:
    from tasks.spec import StageSpec


def _model(section: dict[str, Any]) -> dict[str, Any]:
    """A model section whose ``kwargs.weights`` file (a state_dict) counts by content, and whose
    ``python:`` factory counts by the source of its module."""
    kwargs = section.get("kwargs") or {}
    weights = kwargs.get("weights")
    if isinstance(weights, str) and Path(weights).expanduser().is_file():
        section = {**section, "kwargs": {**kwargs, "weights": file_sha256(Path(weights).expanduser())}}
    arch = str(section.get("arch", ""))
    if arch.startswith("python:"):
        section = {**section, "source": _module_sha256(arch[len("python:") :].split(":")[0])}
    return section


def _module_sha256(name: str) -> str | None:
    spec = importlib.util.find_spec(name)
    origin = getattr(spec, "origin", None)
    return file_sha256(origin) if origin and Path(origin).is_file() else None


def _with_user_code(cfg: PipelineConfig, reads: dict[str, Any]) -> dict[str, Any]:
    """A training stage also depends on the plugin modules of ``imports:`` (their losses, models)."""
    if cfg.imports:
        reads["imports"] = {name: _module_sha256(name) for name in cfg.imports}
    return reads


def _trainer(cfg: PipelineConfig) -> dict[str, Any]:
    # retries, thread count, where the machines meet, the stages' schedule and how many epochs' checkpoints
    # stay on disk do not change what is computed
    trainer = cfg.trainer.model_dump(
        mode="json", exclude={"retries", "num_threads", "rdzv_endpoint", "concurrent_stages", "keep_checkpoints"}
    )
    if trainer["nnodes"] == 1:  # one machine: as before the setting existed (cached homes stay valid)
        trainer.pop("nnodes")
    if not trainer["channels_last"]:  # likewise
        trainer.pop("channels_last")
    return trainer


def teacher_reads(cfg: PipelineConfig) -> dict[str, Any]:
    section = _model(cfg.section("teacher"))
    if cfg.teacher.augment.policy == "none":  # as before the setting existed (cached homes stay valid)
        section.pop("augment", None)
    if cfg.teacher.checkpoint:  # the weights' content matters, not where they lie
        section["checkpoint"] = file_sha256(cfg.teacher.checkpoint)
        section.pop("train")
        section.pop("augment", None)
    return _with_user_code(cfg, {"teacher": section, "trainer": _trainer(cfg)})


def features_reads(cfg: PipelineConfig) -> dict[str, Any]:
    reads = {
        "dtype": cfg.cache.dtype,
        "paths": teacher_paths(cfg),
        "views": cfg.cache.views.spec(),
        "topk": cfg.cache.topk,
    }
    if cfg.cache.precision != "float32":  # the outputs then depend on the autocast dtype, hence amp and device
        reads["precision"] = {"cache": cfg.cache.precision, "amp": cfg.trainer.amp, "device": cfg.trainer.device}
    if cfg.trainer.channels_last:  # and on the teacher's memory format (its kernels round differently)
        reads["channels_last"] = True
    return reads


def pretrain_reads(cfg: PipelineConfig) -> dict[str, Any]:
    return _with_user_code(
        cfg, {"pretrain": cfg.section("pretrain"), "student": _model(cfg.section("student")), "trainer": _trainer(cfg)}
    )


def distill_reads(cfg: PipelineConfig) -> dict[str, Any]:
    return _with_user_code(
        cfg,
        {
            "distill": cfg.section("distill"),
            "mode": cfg.cache.mode,
            "views": cfg.cache.views.spec(),
            "trainer": _trainer(cfg),
        },
    )


def baseline_reads(cfg: PipelineConfig) -> dict[str, Any]:
    return _with_user_code(
        cfg,
        {
            "train": cfg.baseline_train().model_dump(mode="json"),
            "student": _model(cfg.section("student")),
            "views": cfg.cache.views.spec(),
            "trainer": _trainer(cfg),
        },
    )


def evaluate_reads(cfg: PipelineConfig) -> dict[str, Any]:
    return {"evaluate": cfg.section("evaluate")}


def register_reads(cfg: PipelineConfig) -> dict[str, Any]:
    return {"register": cfg.section("register"), "experiment": cfg.name}


def export_reads(cfg: PipelineConfig) -> dict[str, Any]:
    return {"export": cfg.section("export")}


def fingerprint(stage: Union[str, "StageSpec"], cfg: PipelineConfig, data_fp: str, inputs: dict[str, dict]) -> str:
    """The fingerprint of ``stage`` (a name or its spec) given its inputs' records (or just their
    ``{"fingerprint": ...}``)."""
    from tasks.spec import stage_spec  # the declarations import the task bodies, which import this module

    spec = stage_spec(stage) if isinstance(stage, str) else stage
    upstream = {name: inputs[name]["fingerprint"] for name in spec.inputs if name in inputs}
    return stage_fingerprint(spec.name, spec.reads(cfg), upstream, data_fp)
