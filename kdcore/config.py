"""The pipeline configuration: pydantic v2 models loaded from YAML, overridable with ``a.b=c``.

Every section forbids unknown keys, so a typo fails before any work starts, naming the field.
"""
from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ByteSize, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt,
                      ValidationError, model_validator)

from kdcore.errors import ConfigError

STAGES = ("teacher", "features", "pretrain", "distill", "baseline", "evaluate", "register")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(Section):
    """The train transform of streamed images (torchvision.transforms.v2): a random resized crop to
    ``data.image_size`` and a horizontal flip, each view drawn from a stored seed."""

    crop: bool = True
    scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect-ratio range")
    flip: bool = True

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentConfig":
        if not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ValueError(f"data.augment.scale must satisfy 0 < low <= high <= 1, got {list(self.scale)}")
        if not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"data.augment.ratio must satisfy 0 < low <= high, got {list(self.ratio)}")
        return self


class DataConfig(Section):
    name: str = "mnist5k"
    root: Optional[str] = None
    download: bool = False
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="only for datasets without an official test split")
    split_seed: int = 0
    limit_train: Optional[PositiveInt] = None
    limit_test: Optional[PositiveInt] = None
    image_size: Optional[PositiveInt] = Field(
        None, description="image files (imagefolder, image_csv): side of the square images the models see; "
                          "in memory a resize, streamed a resize + centre crop (eval) or a random resized crop (train)")
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options")
    in_memory: Union[Literal["auto"], bool] = Field(
        "auto", description="image files: hold decoded tensors in memory (true), stream them from disk through a "
                            "DataLoader (false), or decide by the decoded size against memory_budget (auto)")
    memory_budget: ByteSize = Field(ByteSize(2 * 1000**3), description="in_memory auto: the largest decoded size "
                                                                       "held in memory, e.g. 2GB, 500MiB")
    num_workers: Optional[NonNegativeInt] = Field(None, description="streaming: DataLoader worker processes "
                                                                    "(default: from the CPU count)")
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(),
                                   description="streaming: the train transform of augmented views")
    fingerprint: Literal["stat", "content"] = Field(
        "stat", description="streaming: fingerprint the file list with sizes and mtimes (stat) or content hashes")


class TrainSpec(Section):
    """Optimisation and convergence settings shared by every training stage."""

    max_epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    scheduler: Literal["cosine", "none"] = "cosine"
    monitor: Literal["val_top1", "val_loss"] = "val_top1"
    patience: Optional[PositiveInt] = Field(None, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)
    target: Optional[float] = Field(None, description="stop once the monitored value reaches this")
    grad_clip: Optional[PositiveFloat] = None


class TeacherConfig(Section):
    arch: str = "cnn_medium"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Optional[str] = Field(None, description="load these weights instead of training")
    train: TrainSpec = Field(default_factory=TrainSpec)


class StudentConfig(Section):
    arch: str = "cnn_tiny"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ViewsConfig(Section):
    """Augmented views of the training images: the teacher's output on each is cached and replayed."""

    policy: Literal["none", "shift", "crop_flip"] = "none"
    num_views: PositiveInt = 1
    pad: int = Field(2, ge=0, le=16, description="maximum shift in pixels")
    seed: int = 0

    @model_validator(mode="after")
    def _one_view_without_augmentation(self) -> "ViewsConfig":
        if self.policy == "none" and self.num_views != 1:
            raise ValueError("cache.views.num_views must be 1 when cache.views.policy is 'none'")
        return self


class CacheConfig(Section):
    mode: Literal["cached", "online"] = "cached"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    features: list[str] = Field(default_factory=list, description="extra teacher module paths to store")
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    topk: Optional[PositiveInt] = Field(None, description="store only the k largest logits per sample")
    rebuild: bool = Field(True, description="rebuild a damaged entry (else fail)")
    verify: Literal["size", "sha256"] = Field("size", description="how readers check an entry's files")


class FeaturePair(Section):
    student: str
    teacher: str
    connector: Optional[str] = Field(None, description="this pair's connector kind (default: pretrain.connector)")


class PretrainConfig(Section):
    method: Literal["none", "hint", "teacher_layers"] = "none"
    pairs: list[FeaturePair] = Field(default_factory=list)
    connector: Literal["auto", "none", "conv", "linear"] = "auto"
    select: Union[Literal["first", "last", "spread"], dict[str, list[int]]] = Field(
        "first", description="teacher_layers: which teacher blocks a shorter student stage takes: a rule, or "
                             "{stage path: [teacher block index per student block]}")
    mapping: Optional[dict[str, str]] = None
    partial: bool = Field(False, description="teacher_layers: copy the leading slice of teacher tensors whose "
                                             "shapes are larger (narrower student layers)")
    freeze_copied: bool = Field(True, description="teacher_layers: keep the tensors copied whole frozen while the "
                                                  "new or reshaped layers train")
    losses: Optional[dict[str, dict[str, Any]]] = Field(
        None, description="teacher_layers: objective that trains the new or reshaped layers "
                          "(default ce 0.1 + kd 0.9 at distill.temperature)")
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(max_epochs=3))

    @model_validator(mode="after")
    def _pairs_for_hint(self) -> "PretrainConfig":
        if self.method == "hint" and not self.pairs:
            raise ValueError("pretrain.method 'hint' needs at least one pair {student: PATH, teacher: PATH}")
        return self


class DistillConfig(Section):
    temperature: PositiveFloat = 4.0
    losses: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"kd": {"weight": 0.9}, "ce": {"weight": 0.1}}
    )
    train: TrainSpec = Field(default_factory=TrainSpec)

    def objective_spec(self) -> dict[str, dict[str, Any]]:
        """The loss spec with the section's temperature filled in where a loss takes one."""
        spec = copy.deepcopy(self.losses)
        for name in ("kd", "dkd"):
            if name in spec:
                spec[name].setdefault("temperature", self.temperature)
        return spec


class BaselineConfig(Section):
    enabled: bool = True
    train: Optional[TrainSpec] = Field(None, description="defaults to distill.train (same budget)")


class EvaluateConfig(Section):
    batch_size: PositiveInt = 512
    latency: bool = True
    min_run_time: PositiveFloat = 0.2
    throughput_batch: PositiveInt = 256


class RegisterConfig(Section):
    enabled: bool = True
    teacher_name: str = "kdflow-teacher"
    student_name: str = "kdflow-student"


class ExportConfig(Section):
    """The registered student is also exported for serving, checked against the PyTorch model's outputs."""

    format: Literal["torchscript", "none"] = "torchscript"
    atol: PositiveFloat = Field(1e-4, description="largest allowed |exported - PyTorch| output difference")


class RetrainConfig(Section):
    """When the retrain flow retrains, and when its new student (challenger) replaces the champion."""

    max_age_days: Optional[PositiveFloat] = Field(30.0, description="retrain once the champion is older (None: never)")
    min_improvement: float = Field(0.0, ge=0, le=1, description="test top-1 gain (a fraction) the challenger needs")
    alpha: float = Field(0.05, gt=0, lt=1, description="McNemar significance level for the gain")


class SweepConfig(Section):
    """Trials of the sweep flow: ``trials`` (overrides) crossed with ``grid``, sharing one teacher and cache."""

    trials: list[dict[str, Any]] = Field(default_factory=list, description="one {dotted.key: value} per trial")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted.key: values, crossed with trials")
    task_runner: Literal["thread", "ray", "dask"] = "thread"
    max_workers: Optional[PositiveInt] = Field(None, description="concurrent trials (thread runner)")
    address: Optional[str] = Field(None, description="Ray or Dask cluster address (None: a local cluster)")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPU resource each trial asks of Ray/Dask")
    register_trials: bool = Field(False, description="register every trial's student in the model registry")
    profile: bool = Field(True, description="re-measure latency of every student one at a time after the trials")


class TrainerConfig(Section):
    device: str = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    seed: int = 0
    num_threads: Optional[PositiveInt] = None
    deterministic: bool = True
    retries: int = Field(1, ge=0, description="Prefect retries of a training stage (resumes from checkpoint)")
    devices: PositiveInt = Field(1, description="processes for DistributedDataParallel training (GPUs, or CPU)")

    @model_validator(mode="after")
    def _device(self) -> "TrainerConfig":
        d = self.device
        if not (d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ValueError(f"trainer.device {d!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.devices > 1 and d not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.devices = {self.devices} needs trainer.device auto, cpu or cuda, not {d!r}")
        return self


with warnings.catch_warnings():  # a section named "register" shadows ABCMeta.register; harmless
    warnings.simplefilter("ignore", UserWarning)

    class PipelineConfig(Section):
        name: str = Field("kdflow", description="MLflow experiment name")
        data: DataConfig = Field(default_factory=DataConfig)
        teacher: TeacherConfig = Field(default_factory=TeacherConfig)
        student: StudentConfig = Field(default_factory=StudentConfig)
        cache: CacheConfig = Field(default_factory=CacheConfig)
        pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
        distill: DistillConfig = Field(default_factory=DistillConfig)
        baseline: BaselineConfig = Field(default_factory=BaselineConfig)
        evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
        register: RegisterConfig = Field(default_factory=RegisterConfig)
        trainer: TrainerConfig = Field(default_factory=TrainerConfig)
        export: ExportConfig = Field(default_factory=ExportConfig)
        retrain: RetrainConfig = Field(default_factory=RetrainConfig)
        sweep: SweepConfig = Field(default_factory=SweepConfig)

        def baseline_train(self) -> TrainSpec:
            return self.baseline.train or self.distill.train

        def section(self, name: str) -> dict[str, Any]:
            return getattr(self, name).model_dump(mode="json")

        def config_hash(self) -> str:
            blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
            return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """``distill.temperature=4`` -> (["distill", "temperature"], 4); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def _format_errors(exc: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key (not a field of this section)")
        elif err["type"] == "missing":
            lines.append(f"{loc}: required field is missing")
        else:
            value = err.get("input")
            shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
            lines.append(f"{loc or 'config'} = {shown}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> PipelineConfig:
    data = apply_overrides(raw or {}, overrides or [])
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, data)) from None
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    raw = read_yaml(path) if path is not None else {}
    return config_from_dict(raw, overrides)
