"""Function matching's invariant: every distillation step receives the teacher's output on exactly
the (augmented, mixed) image the student trains on, for every view policy; the mixing arrays stored
with the cache are what the replay uses; views cycle; bad view settings fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from conftest import tiny_config
from kdcore.cache import cache_key, key_fields
from kdcore.config import config_from_dict
from kdcore.data import load_dataset
from kdcore.data.augment import MIX_BOX, MIX_LAM, MIX_PARTNER, epoch_views, mix_params, replay_views
from kdcore.errors import ConfigError
from kdcore.losses import KDInputs
from kdcore.losses.registry import LOSSES, DistillLoss
from kdcore.models import create_model
from kdcore.stages import StageEnv, TeacherSource, build_features
from kdcore.stages.distill import _train_with_objective
from kdcore.stages.features import split_views

VIEWS = 3
POLICIES = {
    "none": {"policy": "none", "num_views": 1},
    "shift": {"policy": "shift", "num_views": VIEWS, "pad": 2},
    "crop_flip": {"policy": "crop_flip", "num_views": VIEWS, "pad": 2},
    "random_resized_crop": {"policy": "random_resized_crop", "num_views": VIEWS, "scale": [0.3, 0.8]},
    "mixup": {"policy": "none", "num_views": VIEWS, "mix": "mixup", "mix_alpha": 0.5},
    "cutmix": {"policy": "none", "num_views": VIEWS, "mix": "cutmix"},
    "rrc+mixup": {"policy": "random_resized_crop", "num_views": VIEWS, "mix": "mixup"},
    "crop_flip+cutmix": {"policy": "crop_flip", "num_views": VIEWS, "mix": "cutmix", "mix_alpha": 2.0},
}


class _Captured:
    steps: list[dict[str, Tensor | None]] = []


class _SpyLoss(DistillLoss):
    """Records what a step hands the objective (teacher logits, indices, mixed labels)."""

    name = "views_spy"
    needs_teacher = True

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        _Captured.steps.append(
            {
                "teacher": inp.teacher_logits.detach().clone() if inp.teacher_logits is not None else None,
                "indices": inp.indices,
                "targets": inp.targets.clone(),
                "mix_targets": inp.mix_targets,
                "mix_lam": inp.mix_lam,
            }
        )
        return {"views_spy": inp.student_logits.float().pow(2).mean()}


@pytest.fixture(scope="module", autouse=True)
def spy_loss():
    """The spy, registered through kdcore's loss registry for this module only."""
    LOSSES.register("views_spy")(_SpyLoss)
    yield
    LOSSES._items.pop("views_spy", None)


@pytest.fixture(scope="module")
def data():
    return load_dataset(tiny_config().data.model_copy(update={"limit_train": 80, "limit_test": 32}))


def _teacher(data):
    torch.manual_seed(0)
    return create_model("cnn_small", in_channels=data.in_channels, num_classes=data.num_classes).eval()


def _run(data, tmp_path, views, epochs=1):
    """Build a float32 cache for ``views``, then distil with the spy loss, capturing every step's
    student input (a forward pre-hook) and teacher output (the spy)."""
    cfg = tiny_config(
        cache={"views": {"seed": 11, **views}},
        distill={"losses": {"views_spy": {"weight": 1.0}}, "train": {"max_epochs": epochs, "batch_size": 32}},
    )
    env = StageEnv(cfg, data, tmp_path / "work")
    teacher = _teacher(data)
    entries = {s: e for s, (e, _) in build_features(env, teacher, "sha", tmp_path / "cache", batch_size=48).items()}
    inputs, steps = _distil_spied(env, TeacherSource(env, entries, None, []))
    assert len(steps) == len(inputs) == epochs * -(-len(data.train) // 32)
    return env, entries["train"], teacher, inputs, steps


def _distil_spied(env, source) -> tuple[list[Tensor], list[dict[str, Tensor | None]]]:
    """Distil a fresh student with the spy loss: every training step's student input (a forward
    pre-hook) and what the step handed the objective (the spy), in order."""
    data = env.data
    student = create_model("cnn_tiny", in_channels=data.in_channels, num_classes=data.num_classes)
    inputs: list[Tensor] = []
    hook = student.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach().clone()) if m.training else None)
    _Captured.steps = []
    try:
        _train_with_objective(env, student, {"views_spy": {"weight": 1.0}}, env.cfg.distill.train, source, "distill")
    finally:
        hook.remove()
    return inputs, [s for s in _Captured.steps if s["indices"] is not None]  # train steps (val has no indices)


@pytest.mark.parametrize("name", list(POLICIES))
def test_each_step_gets_the_teachers_output_on_its_very_input(data, tmp_path, name):
    views = POLICIES[name]
    env, entry, teacher, inputs, steps = _run(data, tmp_path, views)
    x_all, y_all = env.split("train")
    seeds = torch.from_numpy(entry.seeds())
    mixing = entry.mixing()
    spec = split_views(env.cfg, "train")
    chosen = epoch_views(len(x_all), views["num_views"], 11, 0)
    other_differs = 0
    with torch.no_grad():
        for xb, step in zip(inputs, steps):
            torch.testing.assert_close(step["teacher"], teacher(xb), rtol=0, atol=1e-5)
            idx = step["indices"]
            if views["num_views"] > 1:
                # the replay is not vacuous: another view of the same samples is another input and output
                wrong = replay_views(x_all, idx, (chosen[idx] + 1) % views["num_views"], seeds, mixing, spec)
                assert not torch.allclose(wrong.x, xb)
                other_differs += int((teacher(wrong.x) - step["teacher"]).abs().max() > 1e-3)
            else:
                torch.testing.assert_close(xb, x_all[idx], rtol=0, atol=0)
            if mixing is None:
                assert step["mix_targets"] is None and step["mix_lam"] is None
            else:  # the student's mixed labels are the stored partners' labels and coefficients
                v = chosen[idx].numpy()
                partner = torch.from_numpy(mixing[MIX_PARTNER][idx.numpy(), v].astype(np.int64))
                assert torch.equal(step["mix_targets"], y_all[partner])
                assert torch.equal(step["mix_lam"], torch.from_numpy(mixing[MIX_LAM][idx.numpy(), v]))
                assert not torch.allclose(xb, replay_views(x_all, idx, chosen[idx], seeds, None, spec).x)
    if views["num_views"] > 1:
        assert other_differs == len(steps)


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_the_stored_mixing_is_what_the_teacher_scored(data, tmp_path, mix):
    cfg = tiny_config(cache={"views": {"policy": "crop_flip", "num_views": 2, "seed": 4, "mix": mix}})
    env = StageEnv(cfg, data, tmp_path / "work")
    teacher = _teacher(data)
    entry = build_features(env, teacher, "sha", tmp_path / "cache")["train"][0]
    stored = entry.mixing()
    n = len(data.train)
    x = env.split("train")[0]
    expected = mix_params(n, 2, 4, mix, 1.0, tuple(x.shape[-2:]))
    names = {MIX_PARTNER, MIX_LAM, MIX_BOX} if mix == "cutmix" else {MIX_PARTNER, MIX_LAM}
    assert set(stored) == set(expected) == names
    for k in stored:
        assert np.array_equal(stored[k], expected[k])
    assert stored[MIX_PARTNER].dtype == np.int32 and stored[MIX_LAM].dtype == np.float32
    assert (stored[MIX_PARTNER] != np.arange(n)[:, None]).all()
    assert ((stored[MIX_LAM] >= 0) & (stored[MIX_LAM] <= 1)).all()
    if mix == "cutmix":
        box = stored[MIX_BOX].astype(np.int64)
        h, w = x.shape[-2:]
        area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
        np.testing.assert_allclose(stored[MIX_LAM], 1 - area / (h * w), rtol=1e-6)
    logits = entry.read_all("logits")
    seeds = torch.from_numpy(entry.seeds())
    spec = split_views(cfg, "train")
    idx = torch.arange(n)
    with torch.no_grad():
        for v in range(2):
            replayed = replay_views(x, idx, torch.full_like(idx, v), seeds, stored, spec)
            torch.testing.assert_close(logits[:, v], teacher(replayed.x), rtol=0, atol=1e-5)
            # with other partners the teacher's output is another one: the stored pairs matter
            shuffled = {**stored, MIX_PARTNER: np.roll(stored[MIX_PARTNER], 1, axis=0)}
            wrong = replay_views(x, idx, torch.full_like(idx, v), seeds, shuffled, spec)
            assert (teacher(wrong.x) - logits[:, v]).abs().amax(dim=1).gt(1e-3).float().mean() > 0.5


def test_mixed_cross_entropy_uses_both_labels():
    from kdcore.losses import build_objective

    logits = torch.randn(4, 10)
    y, y2 = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    lam = torch.tensor([1.0, 0.0, 0.25, 0.5])
    objective = build_objective({"ce": {"weight": 1.0}})
    total, _ = objective(KDInputs(logits, None, y, mix_targets=y2, mix_lam=lam))
    ce = torch.nn.functional.cross_entropy
    expected = (lam * ce(logits, y, reduction="none") + (1 - lam) * ce(logits, y2, reduction="none")).mean()
    torch.testing.assert_close(total, expected)
    plain, _ = objective(KDInputs(logits, None, y))
    torch.testing.assert_close(plain, ce(logits, y))


def test_an_epoch_rarely_repeats_a_view():
    n, v = 50, 8
    cycle = torch.stack([epoch_views(n, v, 3, e) for e in range(v)], dim=1)  # [N, V] over one cycle
    assert (cycle.sort(dim=1).values == torch.arange(v)).all()  # every view exactly once per sample
    assert torch.equal(epoch_views(n, v, 3, 5), epoch_views(n, v, 3, 5))  # resume replays the epoch
    nxt = torch.stack([epoch_views(n, v, 3, e) for e in range(v, 2 * v)], dim=1)
    assert (nxt.sort(dim=1).values == torch.arange(v)).all() and not torch.equal(nxt, cycle)
    assert not torch.equal(epoch_views(n, v, 4, 0), epoch_views(n, v, 3, 0))
    assert torch.equal(epoch_views(n, 1, 3, 7), torch.zeros(n, dtype=torch.long))


def test_every_view_setting_is_in_the_cache_key():
    def key(**views):
        cfg = tiny_config(cache={"views": views})
        return cache_key(key_fields("t", "d", "train", split_views(cfg, "train"), "float32"), ["logits"])

    rrc = {"policy": "random_resized_crop", "num_views": 4}
    keys = {
        key(policy="crop_flip", num_views=4),
        key(**rrc),
        key(**rrc, scale=[0.5, 1.0]),
        key(**rrc, ratio=[0.9, 1.1]),
        key(**rrc, flip=False),
        key(**rrc, mix="mixup"),
        key(**rrc, mix="cutmix"),
        key(**rrc, mix="mixup", mix_alpha=0.2),
    }
    assert len(keys) == 8
    # entries built before the new fields existed keep their keys
    assert split_views(tiny_config(cache={"views": {"policy": "shift", "num_views": 2}}), "train") == {
        "policy": "shift",
        "num_views": 2,
        "pad": 2,
        "seed": 0,
    }


@pytest.mark.parametrize(
    "views, message",
    [
        ({"policy": "random_resized_crop", "num_views": 4, "scale": [0.9, 0.5]}, "cache.views.scale"),
        ({"policy": "random_resized_crop", "num_views": 4, "scale": [0.0, 1.0]}, "cache.views.scale"),
        ({"policy": "random_resized_crop", "num_views": 4, "ratio": [2.0, 1.0]}, "cache.views.ratio"),
        ({"policy": "none", "num_views": 4, "mix": "mixup", "mix_alpha": 0}, "mix_alpha"),
        ({"policy": "none", "num_views": 4, "mix": "blend"}, "mix"),
    ],
)
def test_bad_view_settings_fail_clearly(views, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"cache": {"views": views}})


def test_mixing_is_refused_for_non_images():
    from kdcore.preflight import preflight_with_data

    cfg = config_from_dict({"cache": {"views": {"mix": "mixup", "num_views": 2}}})
    with pytest.raises(ConfigError, match="cache.views.mix = 'mixup' mixes images"):
        preflight_with_data(cfg, (20,), 2)


def test_mixing_streamed_images_is_refused_before_any_work(tmp_path):
    from images import write_image_folder

    from kdcore.preflight import preflight_data
    from kdcore.stages.features import build_features

    folder = write_image_folder(tmp_path / "imgs")
    cfg = tiny_config(
        data={"name": "imagefolder", "root": str(folder), "image_size": 16, "in_memory": False, "num_workers": 0},
        cache={"views": {"mix": "cutmix", "num_views": 2}},
    )
    data = load_dataset(cfg.data)
    with pytest.raises(ConfigError, match="cache.views.mix needs the images in memory"):
        preflight_data(cfg, data)
    with pytest.raises(ConfigError, match="cache.views.mix needs the images in memory"):  # the stage refuses too
        build_features(StageEnv(cfg, data, tmp_path / "work"), _teacher(data), "sha", tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("policy,cached", [("crop_flip", True), ("random_resized_crop", True), ("crop_flip", False)])
def test_streamed_steps_get_the_teachers_output_on_their_very_crops(tmp_path, policy, cached):
    """Streamed images: every distillation step's student input is the crop its sample's view
    of the epoch names (cut by the loader workers from the crop stored with the cache, or, with the
    teacher online, from the view's seed), and the teacher output it receives is the teacher's on
    that very input, over two epochs of views."""
    from images import write_image_folder

    folder = write_image_folder(tmp_path / "imgs")
    cfg = tiny_config(
        data={"name": "imagefolder", "root": str(folder), "image_size": 16, "in_memory": False, "num_workers": 0},
        cache={"views": {"policy": policy, "num_views": VIEWS, "seed": 11}},
        distill={"losses": {"views_spy": {"weight": 1.0}}, "train": {"max_epochs": 2, "batch_size": 8}},
    )
    data = load_dataset(cfg.data)
    env = StageEnv(cfg, data, tmp_path / "work")
    teacher = _teacher(data)
    entries = {s: e for s, (e, _) in build_features(env, teacher, "sha", tmp_path / "cache", batch_size=8).items()}
    source = TeacherSource(env, entries, None, []) if cached else TeacherSource(env, None, teacher, [])
    crops = source.crops("train")
    seeds = source.seeds("train", len(data.train))
    if cached:
        assert crops is not None and len({tuple(c) for c in crops.reshape(-1, 5).tolist()}) > len(data.train)
    else:
        assert crops is None and len(set(seeds.reshape(-1).tolist())) == seeds.size  # a seed per (sample, view)
    inputs, steps = _distil_spied(env, source)
    per_epoch = len(steps) // 2
    assert len(steps) == len(inputs) == 2 * per_epoch and per_epoch >= len(data.train) // 8
    ds = data.train.dataset()
    shown: set[tuple[int, int]] = set()
    for k, (x, step) in enumerate(zip(inputs, steps)):
        chosen = epoch_views(len(data.train), VIEWS, 11, k // per_epoch)
        for row, i in enumerate(step["indices"].tolist()):
            v = int(chosen[i])
            shown.add((i, v))
            view = crops[i, v].tolist() if crops is not None else int(seeds[i, v])
            assert torch.equal(x[row], ds[(i, view)]["x"]), (k, i, v)  # the view's very crop
        with torch.no_grad():
            torch.testing.assert_close(step["teacher"], teacher(x).float(), rtol=0, atol=1e-5)
    assert len({v for _, v in shown}) > 1  # the epochs showed more than one view
