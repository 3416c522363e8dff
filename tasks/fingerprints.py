"""Stage fingerprints: exactly what determines each stage's result (the Prefect cache key)."""
from __future__ import annotations

from typing import Any

from kdcore.config import PipelineConfig
from kdcore.fingerprint import file_sha256, stage_fingerprint
from kdcore.stages import teacher_paths

# Which upstream records each stage consumes (the DAG's edges).
INPUTS: dict[str, tuple[str, ...]] = {
    "teacher": (),
    "features": ("teacher",),
    "pretrain": ("teacher", "features"),
    "distill": ("pretrain", "features", "teacher"),
    "baseline": (),
    "evaluate": ("teacher", "baseline", "distill"),
    "register": ("teacher", "distill", "evaluate"),
}


def _trainer(cfg: PipelineConfig) -> dict[str, Any]:
    # retries and thread count do not change what is computed
    return cfg.trainer.model_dump(mode="json", exclude={"retries", "num_threads"})


def stage_section(stage: str, cfg: PipelineConfig) -> dict[str, Any]:
    if stage == "teacher":
        section = cfg.section("teacher")
        if cfg.teacher.checkpoint:  # the weights' content matters, not where they lie
            section["checkpoint"] = file_sha256(cfg.teacher.checkpoint)
            section.pop("train")
        return {"teacher": section, "trainer": _trainer(cfg)}
    if stage == "features":
        return {"dtype": cfg.cache.dtype, "paths": teacher_paths(cfg), "views": cfg.cache.views.model_dump(),
                "topk": cfg.cache.topk}
    if stage == "pretrain":
        return {"pretrain": cfg.section("pretrain"), "student": cfg.section("student"), "trainer": _trainer(cfg)}
    if stage == "distill":
        return {"distill": cfg.section("distill"), "mode": cfg.cache.mode, "views": cfg.cache.views.model_dump(),
                "trainer": _trainer(cfg)}
    if stage == "baseline":
        return {"train": cfg.baseline_train().model_dump(mode="json"), "student": cfg.section("student"),
                "views": cfg.cache.views.model_dump(), "trainer": _trainer(cfg)}
    if stage == "evaluate":
        return {"evaluate": cfg.section("evaluate")}
    if stage == "register":
        return {"register": cfg.section("register"), "experiment": cfg.name}
    raise ValueError(f"unknown stage {stage!r}")


def fingerprint(stage: str, cfg: PipelineConfig, data_fp: str, inputs: dict[str, dict]) -> str:
    upstream = {name: inputs[name]["fingerprint"] for name in INPUTS[stage] if name in inputs}
    return stage_fingerprint(stage, stage_section(stage, cfg), upstream, data_fp)
