"""The pipeline configuration: pydantic v2 models loaded from YAML, overridable with ``a.b=c``.

Every section forbids unknown keys, so a typo fails before any work starts, naming the field.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
import typing
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from kdcore.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_crop_ranges(where: str, scale: tuple[float, float], ratio: tuple[float, float]) -> None:
    """A random resized crop's area range must lie in (0, 1] and its aspect-ratio range be positive."""
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"{where}.scale must satisfy 0 < low <= high <= 1, got {list(scale)}")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"{where}.ratio must satisfy 0 < low <= high, got {list(ratio)}")


class AugmentConfig(Section):
    """The train transform of streamed images (torchvision.transforms.v2): a random resized crop to
    ``data.image_size`` and a horizontal flip, each view drawn from a stored seed."""

    crop: bool = True
    scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect-ratio range")
    flip: bool = True

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentConfig":
        check_crop_ranges("data.augment", self.scale, self.ratio)
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
        None,
        description="image files (imagefolder, image_csv): side of the square images the models see; "
        "in memory a resize, streamed a resize + centre crop (eval) or a random resized crop (train)",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options")
    in_memory: Union[Literal["auto"], bool] = Field(
        "auto",
        description="image files: hold decoded tensors in memory (true), stream them from disk through a "
        "DataLoader (false), or decide by the decoded size against memory_budget (auto)",
    )
    memory_budget: ByteSize = Field(
        ByteSize(2 * 1000**3), description="in_memory auto: the largest decoded size held in memory, e.g. 2GB, 500MiB"
    )
    num_workers: Optional[NonNegativeInt] = Field(
        None, description="streaming: DataLoader worker processes (default: from the CPU count)"
    )
    augment: AugmentConfig = Field(
        default_factory=lambda: AugmentConfig(), description="streaming: the train transform of augmented views"
    )
    fingerprint: Literal["stat", "content"] = Field(
        "stat", description="streaming: fingerprint the file list with sizes and mtimes (stat) or content hashes"
    )
    decoded_store: Union[Literal["auto"], bool] = Field(
        "auto",
        description="streaming: decode every image once into a store on disk and read the pixels back from it "
        "(true), decode the files at every read (false), or decide by the store's estimated size against "
        "decoded_store_budget and the free disk (auto); the same pixels either way",
    )
    decoded_store_budget: ByteSize = Field(
        ByteSize(16 * 1000**3), description="decoded_store auto: the largest store to write, e.g. 16GB"
    )
    decoded_store_dir: Optional[str] = Field(
        None, description="where decoded stores go (default: $KDFLOW_HOME/data/decoded)"
    )


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


class ViewPolicy(Section):
    """A seeded augmentation policy of in-memory images (kdcore.data.augment)."""

    where: ClassVar[str] = "views"
    policy: Literal["none", "shift", "crop_flip", "random_resized_crop"] = "none"
    pad: int = Field(2, ge=0, le=16, description="maximum shift in pixels")
    scale: tuple[float, float] = Field(
        (0.35, 1.0), description="random_resized_crop: range of the crop's area fraction"
    )
    ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="random_resized_crop: range of the crop's aspect ratio (width / height)"
    )
    flip: bool = Field(True, description="random_resized_crop: mirror half of the views")

    @model_validator(mode="after")
    def _ranges(self) -> "ViewPolicy":
        check_crop_ranges(self.where, self.scale, self.ratio)
        return self


class TeacherAugment(ViewPolicy):
    """In-memory data: the teacher trains on a fresh augmented view of every image each epoch, drawn
    from (trainer.seed, epoch, sample). Streamed images are augmented by data.augment instead."""

    where: ClassVar[str] = "teacher.augment"


def _model_kwargs(section: str):
    """A validator of ``<section>.kwargs``: kdflow passes the data's in_channels and num_classes."""

    def check(kwargs: dict[str, Any]) -> dict[str, Any]:
        given = [k for k in ("in_channels", "num_classes") if k in kwargs]
        if given:
            raise ValueError(
                f"{section}.kwargs.{given[0]} = {kwargs[given[0]]!r}: kdflow sets {given[0]} from the data "
                "(its channels and classes); remove it from kwargs"
            )
        return kwargs

    return check


class TeacherConfig(Section):
    arch: str = "cnn_medium"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    _kwargs = field_validator("kwargs")(_model_kwargs("teacher"))
    checkpoint: Optional[str] = Field(None, description="load these weights instead of training")
    train: TrainSpec = Field(default_factory=TrainSpec)
    augment: TeacherAugment = Field(
        default_factory=lambda: TeacherAugment(), description="in-memory data: augmentation of the teacher's training"
    )


class StudentConfig(Section):
    arch: str = "cnn_tiny"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    _kwargs = field_validator("kwargs")(_model_kwargs("student"))


class ViewsConfig(ViewPolicy):
    """Augmented views of the training images: the teacher's output on each is cached and replayed."""

    where: ClassVar[str] = "cache.views"
    num_views: PositiveInt = 1
    seed: int = 0
    mix: Literal["none", "mixup", "cutmix"] = Field(
        "none", description="mix every view with another sample (partners and coefficients stored in the cache)"
    )
    mix_alpha: PositiveFloat = Field(1.0, description="mixing coefficients drawn from Beta(mix_alpha, mix_alpha)")

    def for_streamed(self) -> "ViewsConfig":
        """These views as streamed image data takes them: their crops are ``data.augment``'s, so the
        in-memory policy fields (policy, pad, scale, ratio, flip) are at their defaults, and a change
        to them changes no stage fingerprint."""
        keep = {"num_views", "seed", "mix", "mix_alpha"}
        return ViewsConfig(**{k: v for k, v in self.model_dump().items() if k in keep})

    def spec(self) -> dict[str, Any]:
        """The view specification that keys cache entries: every field, except that the fields added
        after the first four are left out while at their defaults (so entries built before them keep
        their keys)."""
        out = self.model_dump(mode="json")
        defaults = ViewsConfig.model_construct().model_dump(mode="json")
        for name in ("scale", "ratio", "flip", "mix", "mix_alpha"):
            if out[name] == defaults[name]:
                del out[name]
        return out


class CacheConfig(Section):
    mode: Literal["cached", "online"] = "cached"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    features: list[str] = Field(default_factory=list, description="extra teacher module paths to store")
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    topk: Optional[PositiveInt] = Field(None, description="store only the k largest logits per sample")
    precision: Literal["float32", "amp"] = Field(
        "float32",
        description="the teacher's forward while building: float32 (exact outputs) or amp, under trainer.amp's "
        "autocast (bf16 on a CPU with AMX: about 2x faster, outputs rounded to bf16's 8 bits of mantissa)",
    )
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
        "first",
        description="teacher_layers: which teacher blocks a shorter student stage takes: a rule, or "
        "{stage path: [teacher block index per student block]}",
    )
    mapping: Optional[dict[str, str]] = None
    partial: bool = Field(
        False,
        description="teacher_layers: copy the leading slice of teacher tensors whose "
        "shapes are larger (narrower student layers)",
    )
    freeze_copied: bool = Field(
        True, description="teacher_layers: keep the tensors copied whole frozen while the new or reshaped layers train"
    )
    losses: Optional[dict[str, dict[str, Any]]] = Field(
        None,
        description="teacher_layers: objective that trains the new or reshaped layers "
        "(default ce 0.1 + kd 0.9 at distill.temperature)",
    )
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(max_epochs=3))

    @model_validator(mode="after")
    def _pairs_for_hint(self) -> "PretrainConfig":
        if self.method == "hint" and not self.pairs:
            raise ValueError("pretrain.method 'hint' needs at least one pair {student: PATH, teacher: PATH}")
        return self


class DistillConfig(Section):
    temperature: PositiveFloat = 4.0
    losses: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"kd": {"weight": 0.9}, "ce": {"weight": 0.1}})
    train: TrainSpec = Field(default_factory=TrainSpec)

    def objective_spec(self) -> dict[str, dict[str, Any]]:
        """The loss spec with the section's temperature filled in where a loss takes one
        (``DistillLoss.takes_temperature``)."""
        from kdcore.losses import with_temperature

        return with_temperature(self.losses, self.temperature)


class BaselineConfig(Section):
    enabled: bool = True
    train: Optional[TrainSpec] = Field(None, description="defaults to distill.train (same budget)")


class EvaluateConfig(Section):
    batch_size: PositiveInt = 512
    fit_samples: int = Field(
        2000,
        ge=0,
        description="training samples (a fixed, seeded choice) on which every model's fit is measured: "
        "top-1 and agreement with the teacher where it trained (0: not measured)",
    )
    latency: bool = True
    min_run_time: PositiveFloat = 0.2
    throughput_batch: PositiveInt = 256


class RegisterConfig(Section):
    enabled: bool = True
    teacher_name: str = "kdflow-teacher"
    student_name: str = "kdflow-student"
    require_gain: bool = Field(
        False,
        description="register nothing when the distilled student does not beat the "
        "baseline significantly (McNemar on the test split)",
    )


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
    channels_last: bool = Field(
        False,
        description="train image models in the channels-last memory format (NHWC): on a CPU a small CNN's "
        "training step ran 1.4x faster (bench/cpu_bf16.py); the weights then differ from NCHW's in the last bits",
    )
    seed: int = 0
    num_threads: Optional[PositiveInt] = None
    deterministic: bool = True
    retries: int = Field(1, ge=0, description="Prefect retries of a training stage (resumes from checkpoint)")
    keep_checkpoints: PositiveInt = Field(
        1,
        description="per-epoch checkpoints each training stage keeps in its folder (checkpoints/epoch-NNNN/: "
        "weights, optimizer, RNG): 1 is the latest, all a resume needs; more keep earlier epochs' weights, "
        "e.g. an earlier teacher to distil from",
    )
    devices: PositiveInt = Field(1, description="processes for DistributedDataParallel training (GPUs, or CPU)")
    nnodes: PositiveInt = Field(1, description="machines a DDP stage spans (torchrun's nnodes; each runs the stage)")
    rdzv_endpoint: Optional[str] = Field(
        None, description="host:port of torchrun's c10d rendezvous that every machine reaches (nnodes > 1)"
    )
    concurrent_stages: Union[Literal["auto"], bool] = Field(
        "auto",
        description="train independent stages side by side (true) or one after the other in the declared "
        "order (false); auto: side by side only where each branch gets GPUs of its own, one after the other "
        "on the CPU (measured faster: bench/schedule.py), MPS or one shared GPU",
    )

    @model_validator(mode="after")
    def _device(self) -> "TrainerConfig":
        d = self.device
        if not (d in ("auto", "cpu", "cuda", "mps") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ValueError(f"trainer.device {d!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.devices > 1 and d not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.devices = {self.devices} needs trainer.device auto, cpu or cuda, not {d!r}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"trainer.nnodes = {self.nnodes} needs trainer.rdzv_endpoint (host:port every machine reaches)"
            )
        return self


with warnings.catch_warnings():  # a section named "register" shadows ABCMeta.register; harmless
    warnings.simplefilter("ignore", UserWarning)

    class PipelineConfig(Section):
        imports: list[str] = Field(
            default_factory=list,
            description="modules imported before anything is looked up by name: they "
            "register the user's models, losses and datasets (kdcore.plugins)",
        )
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

        @field_validator("imports")
        @classmethod
        def _import_plugins(cls, modules: list[str]) -> list[str]:
            """Import them here, so that wherever a config is validated (the CLI, a flow, a task in a
            worker process) the user's names are registered."""
            from kdcore.plugins import import_plugins

            try:
                return import_plugins(modules)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None

        def baseline_train(self) -> TrainSpec:
            return self.baseline.train or self.distill.train

        def section(self, name: str) -> dict[str, Any]:
            return getattr(self, name).model_dump(mode="json")

        def config_hash(self) -> str:
            blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
            return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Loading


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that also refuses a key written twice in one mapping (PyYAML keeps the last
    one silently, so a forgotten earlier setting would be ignored)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {first + 1})", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line saying what is wrong and where (PyYAML's own message spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "invalid YAML"
        tag = re.search(r"could not determine a constructor for the tag '([^']+)'", problem)
        if tag:
            problem = (
                f"the tag {tag.group(1).replace('tag:yaml.org,2002:', '!!')!r} is not allowed "
                "(a config holds plain values; no objects are built from it)"
            )
        mark = exc.problem_mark or exc.context_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem
    return " ".join(str(exc).split())


def parse_yaml(text: str, where: str) -> Any:
    """Plain YAML (safe, duplicate keys refused); a problem is a ConfigError naming ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {_yaml_problem(exc)}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``distill.temperature=4`` -> (["distill", "temperature"], 4); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"override {item!r} has an empty key (write key.path=value, e.g. distill.temperature=4)")
    if not raw.strip():
        raise ConfigError(
            f"override {item!r} has no value after '=' (write {key.strip()}=null to unset it, "
            f'or {key.strip()}="" for an empty string)'
        )
    return path, parse_yaml(raw, f"override {item!r}: the value")


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
                raise ConfigError(
                    f"override {item!r}: {'.'.join(path[: i + 1])} is not a section "
                    f"(it holds {json.dumps(nxt, default=str)})"
                )
            node = nxt
        node[path[-1]] = value
    return out


def _section_at(loc: tuple[Any, ...]) -> Optional[type[BaseModel]]:
    """The config model (section) found at ``loc`` from the top, or None (a free-form dict, a list)."""
    model: type[BaseModel] = PipelineConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = (field.annotation, *typing.get_args(field.annotation))
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return None
        model = sub
    return model


def _unknown_key(loc: tuple[Any, ...]) -> str:
    section = _section_at(loc[:-1])
    if section is None:
        return "unknown key"
    valid = list(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; valid keys here: {', '.join(valid)}"


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _format_errors(exc: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")  # a validator's own message says what is wrong
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: {_unknown_key(err['loc'])}")
        elif err["type"] == "missing":
            lines.append(f"{loc}: required field is missing")
        elif err["type"] == "value_error" and isinstance(err.get("input"), dict):
            lines.append(str(err["ctx"]["error"]))  # a section's own check, which names its fields and values
        else:
            lines.append(f"{loc or 'config'} = {_shown(err.get('input'))}: {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def config_from_dict(raw: dict[str, Any], overrides: list[str] | None = None) -> PipelineConfig:
    data = apply_overrides(raw or {}, overrides or [])
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, data)) from None
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of sections in a YAML config file; every way the file can be wrong is one ConfigError."""
    p = Path(path)
    where = f"config file {str(p)!r}"
    if p.is_dir():
        raise ConfigError(f"{where} is a directory; give a YAML file")
    if not p.exists():
        raise ConfigError(f"{where} does not exist")
    if not p.is_file():
        raise ConfigError(f"{where} is not a regular file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "a config is a YAML text file"
        ) from None
    if not text.strip():
        raise ConfigError(
            f"{where} is empty; write the settings to change (see configs/default.yaml), or give "
            "no file to run the defaults"
        )
    raw = parse_yaml(text, where)
    if raw is None:
        raise ConfigError(
            f"{where} holds no settings (only comments or blank lines); write the settings to "
            "change, or give no file to run the defaults"
        )
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where} must hold a mapping of sections (name:, data:, teacher: ...), got "
            f"{type(raw).__name__} {_shown(raw)}"
        )
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    raw = read_yaml(path) if path is not None else {}
    return config_from_dict(raw, overrides)
