"""Checks a configuration against the registries before any work starts.

Everything that can be known without data is checked here: names of datasets, models, losses;
model keyword arguments; feature module paths; the teacher checkpoint's presence; the device.
"""

from __future__ import annotations

from pathlib import Path

from kdcore.config import PipelineConfig
from kdcore.errors import ConfigError, KdflowError, describe


def preflight(cfg: PipelineConfig) -> None:
    """Raise one ConfigError listing every problem found, or return None."""
    from kdcore.data import DATASETS
    from kdcore.hooks import module_paths, valid_paths_hint
    from kdcore.losses import build_objective
    from kdcore.models import create_model
    from kdcore.train.device import resolve_device

    problems: list[str] = []

    def check(label: str, fn):
        try:
            return fn()
        except KdflowError as exc:
            problems.append(f"{label}: {exc}")
            return None

    check("data.name", lambda: DATASETS.get(cfg.data.name))
    teacher = check(
        "teacher.arch", lambda: create_model(cfg.teacher.arch, in_channels=3, num_classes=10, **cfg.teacher.kwargs)
    )
    student = check(
        "student.arch", lambda: create_model(cfg.student.arch, in_channels=3, num_classes=10, **cfg.student.kwargs)
    )
    objective = check("distill.losses", lambda: build_objective(cfg.distill.objective_spec()))
    if cfg.pretrain.losses:
        check("pretrain.losses", lambda: build_objective(cfg.pretrain.losses))
    check("trainer.device", lambda: resolve_device(cfg.trainer.device))
    if cfg.teacher.checkpoint and not Path(cfg.teacher.checkpoint).expanduser().is_file():
        where = Path(cfg.teacher.checkpoint).expanduser()
        looked = "" if where.is_absolute() else f" (looked for {where.resolve()}: relative to the working directory)"
        problems.append(f"teacher.checkpoint: file {cfg.teacher.checkpoint!r} does not exist{looked}")

    wanted_t = list(cfg.cache.features)
    wanted_s: list[str] = []
    if cfg.pretrain.method == "hint":
        wanted_t += [p.teacher for p in cfg.pretrain.pairs]
        wanted_s += [p.student for p in cfg.pretrain.pairs]
    if objective is not None:
        wanted_t += objective.teacher_paths
        wanted_s += objective.student_paths
    for model, role, wanted in ((teacher, "teacher", wanted_t), (student, "student", wanted_s)):
        if model is None:
            continue
        valid = set(module_paths(model))
        bad = [p for p in dict.fromkeys(wanted) if p not in valid]
        if bad:
            problems.append(
                f"{role} module path(s) {', '.join(map(repr, bad))} not found in "
                f"{getattr(model, 'kdflow_spec', {}).get('arch')}; {valid_paths_hint(model, bad[0])}"
            )
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def preflight_with_data(
    cfg: PipelineConfig, input_shape: tuple[int, ...], num_classes: int, example=None, in_channels: int | None = None
) -> None:
    """Checks that need the data's shape: both models take ``example`` (two of the data's samples),
    feature pairs' shapes against their connectors, and a given teacher checkpoint against the
    configured architecture. Cheap: untrained models, one forward pass of two samples."""
    import torch

    from kdcore.hooks import probe_shapes
    from kdcore.losses import build_objective
    from kdcore.models import create_model
    from kdcore.train.checkpoint import load_teacher

    channels = in_channels if in_channels is not None else (input_shape[0] if len(input_shape) == 3 else 1)
    problems: list[str] = []
    if cfg.cache.views.policy != "none" and len(input_shape) != 3:
        raise ConfigError(
            f"cache.views.policy = {cfg.cache.views.policy!r} augments images, but this dataset's "
            f"samples have shape {tuple(input_shape)}; use policy 'none'"
        )
    if cfg.cache.views.mix != "none" and len(input_shape) != 3:
        raise ConfigError(
            f"cache.views.mix = {cfg.cache.views.mix!r} mixes images, but this dataset's "
            f"samples have shape {tuple(input_shape)}; use mix 'none'"
        )
    if cfg.teacher.checkpoint:
        try:
            load_teacher(cfg.teacher.checkpoint, cfg.teacher.arch, cfg.teacher.kwargs, channels, num_classes)
        except KdflowError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith("teacher.checkpoint") else f"teacher.checkpoint: {msg}") from None
    # every loss checks its own layer pairs (connectors, map/vector ranks) by being built on the probed shapes
    objectives = []
    if cfg.pretrain.method == "hint":
        hint = {
            "fitnet": {
                "pairs": [p.model_dump(exclude_none=True) for p in cfg.pretrain.pairs],
                "connector": cfg.pretrain.connector,
            }
        }
        objectives.append(("pretrain.pairs", build_objective(hint)))
    if cfg.pretrain.method == "teacher_layers" and cfg.pretrain.losses:
        objectives.append(("pretrain.losses", build_objective(cfg.pretrain.losses)))
    objectives.append(("distill.losses", build_objective(cfg.distill.objective_spec())))
    objectives = [(w, o) for w, o in objectives if o.student_paths or o.teacher_paths]
    x = example if example is not None else torch.zeros(2, *input_shape)
    with torch.no_grad():
        models = {}
        for role in ("student", "teacher"):
            section = getattr(cfg, role)
            try:
                models[role] = model = create_model(
                    section.arch, in_channels=channels, num_classes=num_classes, **section.kwargs
                )
                if example is not None:  # a model that cannot take this data's samples fails here, not in a stage
                    out = model.eval()(x)
                    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), num_classes):
                        got = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
                        problems.append(
                            f"{role}.arch: {section.arch!r} must return one tensor of logits [N, {num_classes}] "
                            f"(N samples, the data's {num_classes} classes); on {len(x)} samples it returned {got}"
                        )
            except KdflowError as exc:
                problems.append(f"{role}.arch: {exc}")
            except Exception as exc:  # noqa: BLE001 - any error of the model's forward on these inputs
                problems.append(
                    f"{role}.arch: {section.arch!r} cannot take this dataset's samples of shape "
                    f"{tuple(input_shape)} ({describe(exc)})" + _vit_hint(section.arch, str(exc))
                )
        if problems:
            raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
        for where, objective in objectives:
            s_shapes = probe_shapes(models["student"], objective.student_paths, x) if objective.student_paths else {}
            t_shapes = probe_shapes(models["teacher"], objective.teacher_paths, x) if objective.teacher_paths else {}
            try:
                objective.build(s_shapes, t_shapes, num_samples=1)
            except KdflowError as exc:
                problems.append(f"{where}: {exc}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def preflight_data(cfg: PipelineConfig, data) -> None:
    """``preflight_with_data`` on a loaded dataset (a ``DataBundle``): the checks `kdflow run` makes
    after loading the data and `kdflow validate` makes too."""
    from kdcore.data.stream import is_streamed
    from kdcore.stages.features import MIX_STREAMED
    from kdcore.stages.teacher import AUGMENT_STREAMED

    views = cfg.cache.views
    if views.mix != "none" and is_streamed(data.train):
        raise ConfigError(MIX_STREAMED)
    if not is_streamed(data.train) and views.num_views != 1 and views.policy == "none" and views.mix == "none":
        raise ConfigError(
            f"cache.views.num_views = {views.num_views} but every view would be the same image: with data in "
            "memory the views are cache.views.policy's (and mix's); set a policy (crop_flip, "
            "random_resized_crop, shift) or num_views: 1"
        )
    if cfg.teacher.augment.policy != "none" and not cfg.teacher.checkpoint and is_streamed(data.train):
        raise ConfigError(AUGMENT_STREAMED)
    preflight_with_data(
        cfg, tuple(data.input_shape), data.num_classes, example=data.train.x[:2], in_channels=data.in_channels
    )


def _vit_hint(arch: str, error: str) -> str:
    """What to set when a model with a fixed input size (a ViT) refuses the images: torchvision's
    ``image_size`` or timm's ``img_size`` keyword."""
    if not any(s in error for s in ("image", "Input height", "Input width", "img_size")):
        return ""
    key = "kwargs.img_size" if arch.startswith("timm:") else "kwargs.image_size"
    return f"; a ViT needs {key} equal to the images' side"
