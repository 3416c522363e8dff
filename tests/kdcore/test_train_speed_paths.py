"""The training speed-ups change no result.

Cache entries read into memory once and memory-mapped entries give bit-identical students, and the
size limit really switches between the two. kdcore's teacher, baseline and distill stages train to
exactly the weights of a plain PyTorch loop with the same initialisation, batch order, optimiser,
schedule and loss arithmetic (compared with ``torch.equal`` on every tensor), so nothing the loop
adds around the step (batch gathering, cache reads, loss bookkeeping, callbacks, checkpoints) moves
a weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from kdcore.cache import CacheEntry, CacheError
from kdcore.cache.store import MEMORY_LIMIT_ENV, memory_limit
from kdcore.data import load_dataset
from kdcore.models import create_model
from kdcore.stages import (
    StageEnv,
    TeacherSource,
    build_features,
    distill_student,
    pretrain_student,
    train_baseline,
    train_teacher,
)
from kdcore.train import seed_everything
from kdcore.train.batches import shuffled_batches

TEMPERATURE, W_KD, W_CE = 4.0, 0.9, 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread in these tests (the stages set it from the config); the caller's count restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return load_dataset(tiny_config().data.model_copy(update={"limit_train": 200, "limit_test": 32}))


def _cfg():
    return tiny_config(
        distill={"temperature": TEMPERATURE, "losses": {"kd": {"weight": W_KD}, "ce": {"weight": W_CE}}},
        trainer={"num_threads": 1},
    )


def _assert_same_weights(a: torch.nn.Module, b: dict[str, torch.Tensor]) -> None:
    sa = a.state_dict()
    assert sa.keys() == b.keys()
    different = [k for k in sa if not torch.equal(sa[k], b[k])]
    assert not different, f"tensors differ: {different}"


def _plain_loop(cfg, data, model, spec, loss_fn, best_epoch: int) -> dict[str, torch.Tensor]:
    """A minimal loop: kdflow's batch order, SGD (Nesterov), cosine schedule; the weights of ``best_epoch``."""
    x = data.train.x
    opt = torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, nesterov=True
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.max_epochs)
    kept = None
    for epoch in range(spec.max_epochs):
        model.train()
        for idx in shuffled_batches(len(x), spec.batch_size, cfg.trainer.seed, epoch):
            loss = loss_fn(model(x[idx]), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if epoch == best_epoch:
            kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert kept is not None
    return kept


def _fresh(cfg, data, arch: str, offset: int) -> torch.nn.Module:
    seed_everything(cfg.trainer.seed + offset)  # as StageEnv.build does
    return create_model(arch, in_channels=data.in_channels, num_classes=data.num_classes)


def _ce(y):
    return lambda logits, idx: 1.0 * F.cross_entropy(logits, y[idx])  # the objective's weight 1.0, as it computes


def test_teacher_and_baseline_train_to_a_plain_loops_weights(data, tmp_path):
    cfg = _cfg()
    res = train_teacher(StageEnv(cfg, data, tmp_path / "teacher"))
    assert res.fit.epochs_run == cfg.teacher.train.max_epochs
    plain = _plain_loop(
        cfg,
        data,
        _fresh(cfg, data, cfg.teacher.arch, 0),
        cfg.teacher.train,
        lambda logits, idx: F.cross_entropy(logits, data.train.y[idx]),
        res.fit.best_epoch,
    )
    _assert_same_weights(res.model, plain)

    base = train_baseline(StageEnv(cfg, data, tmp_path / "baseline"))
    plain = _plain_loop(
        cfg,
        data,
        _fresh(cfg, data, cfg.student.arch, 1),
        cfg.baseline_train(),
        _ce(data.train.y),
        base.fit.best_epoch,
    )
    _assert_same_weights(base.model, plain)


def _entries(built, limit: int) -> dict[str, CacheEntry]:
    return {s: CacheEntry(e.root, e.manifest, memory_limit=limit) for s, (e, _) in built.items()}


def test_in_memory_and_mapped_cache_entries_distill_identically(data, tmp_path):
    cfg = _cfg()
    torch.manual_seed(0)
    teacher = create_model("cnn_small", in_channels=data.in_channels, num_classes=data.num_classes).eval()
    built = build_features(StageEnv(cfg, data, tmp_path / "features"), teacher, "sha", tmp_path / "cache")
    init = pretrain_student(StageEnv(cfg, data, tmp_path / "pretrain"), None, None)

    students = {}
    for name, limit, per_batch in (("mapped", 0, False), ("in_memory", 1 << 30, False), ("read", 1 << 30, True)):
        env = StageEnv(cfg, data, tmp_path / name)
        entries = _entries(built, limit)
        source = TeacherSource(env, entries, None, [])
        source.rows_on_device = not per_batch
        students[name] = distill_student(env, init.path, source).model
        # the limit really chose the path (so the comparison below is not between two equal paths):
        # mapped rows are read per batch, in-memory ones gathered from the entry's memory
        assert entries["train"].held_in_memory("logits") is (name != "mapped")
        assert (source._device_rows.get(("train", "logits")) is not None) is (name == "in_memory")
    _assert_same_weights(students["mapped"], students["in_memory"].state_dict())
    _assert_same_weights(students["mapped"], students["read"].state_dict())

    # an accelerator's path: the stored rows copied to the device once and gathered there per step
    env = StageEnv(cfg, data, tmp_path / "device_rows")
    source = TeacherSource(env, _entries(built, 1 << 30), None, [])
    assert source.share_host_rows  # the CPU's default: no copy
    source.share_host_rows, source.device_budget = False, 1 << 30
    on_device = distill_student(env, init.path, source).model
    assert source._device_rows[("train", "logits")] is not None  # the path really ran
    _assert_same_weights(students["mapped"], on_device.state_dict())

    # and both equal a plain loop reading the teacher's logits from one tensor, with the objective's arithmetic
    t_logits = _entries(built, 0)["train"].read_all("logits")[:, 0]
    assert torch.equal(t_logits, teacher(data.train.x).detach())
    y = data.train.y

    def kd(logits, idx):
        t = TEMPERATURE
        log_p = F.log_softmax(logits / t, dim=-1)
        p_t = F.softmax(t_logits[idx] / t, dim=-1)
        return W_KD * (F.kl_div(log_p, p_t, reduction="batchmean") * (t * t)) + W_CE * F.cross_entropy(logits, y[idx])

    env = StageEnv(cfg, data, tmp_path / "again")
    res = distill_student(env, init.path, TeacherSource(env, _entries(built, 1 << 30), None, []))
    plain = _plain_loop(cfg, data, _fresh(cfg, data, cfg.student.arch, 1), cfg.distill.train, kd, res.fit.best_epoch)
    _assert_same_weights(res.model, plain)


def test_the_memory_limit_switches_between_memory_and_map(tmp_path, monkeypatch):
    arr = np.arange(60, dtype=np.float32).reshape(6, 1, 10)
    np.save(tmp_path / "logits.npy", arr)
    size = (tmp_path / "logits.npy").stat().st_size
    manifest = {"dtype": "float32", "topk": None, "num_views": 1, "count": 6}
    idx, views = torch.tensor([4, 1, 1]), torch.tensor([0, 0, 0])
    reads = {}
    for limit in (size - 1, size):
        entry = CacheEntry(tmp_path, manifest, memory_limit=limit)
        reads[limit] = entry.read("logits", idx, views)
        assert entry.held_in_memory("logits") is (limit >= size)
    assert torch.equal(reads[size - 1], reads[size]) and torch.equal(reads[size], torch.from_numpy(arr[[4, 1, 1], 0]))

    monkeypatch.setenv(MEMORY_LIMIT_ENV, "0")  # the default limit comes from the environment
    assert memory_limit() == 0 and not CacheEntry(tmp_path, manifest).held_in_memory("logits")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(size))
    assert CacheEntry(tmp_path, manifest).held_in_memory("logits")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(CacheError, match=MEMORY_LIMIT_ENV):
        CacheEntry(tmp_path, manifest).held_in_memory("logits")
    monkeypatch.delenv(MEMORY_LIMIT_ENV)
    assert memory_limit() > 0  # a share of this machine's RAM
