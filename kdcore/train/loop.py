"""One training loop for every stage: checkpoint each epoch, resume, converge, report by callbacks."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from kdcore.config import TrainSpec
from kdcore.errors import DivergenceError
from kdcore.tensors import NO_CONTEXT, as_float32
from kdcore.train import ddp
from kdcore.train.batches import BatchLike, BatchSource, IndexBatches, shuffled_batches
from kdcore.train.callbacks import TrainCallbacks
from kdcore.train.checkpoint import (
    latest_training_checkpoint,
    load_into,
    load_training_checkpoint,
    read_tensors,
    save_training_checkpoint,
    state_tensors,
)
from kdcore.train.convergence import Convergence
from kdcore.train.device import autocast
from kdcore.train.rng import draws_randomness, seeded_step

StepFn = Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass
class FitResult:
    epochs_run: int
    stop_reason: str
    best_epoch: int
    best_value: Optional[float]
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: Optional[int] = None
    seconds: float = 0.0


def make_optimizer(spec: TrainSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, nesterov=spec.momentum > 0
        )
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


_batches = shuffled_batches  # the name older code imports


CHECK_EVERY = 50
CPU = torch.device("cpu")  # fit()'s default device


class _EpochSums:
    """The per-term sums of an epoch's losses, each step's value weighted by its batch size. On the
    CPU a Python float per step (the cheapest there); on an accelerator the steps' detached values
    are kept and summed once at the epoch's end: no kernel and no host sync per step."""

    def __init__(self, defer: bool) -> None:
        self.defer = defer  # True on an accelerator
        self.floats: dict[str, float] = {}
        self.kept: dict[str, list[tuple[torch.Tensor, int]]] = {}

    def add(self, name: str, value: Union[torch.Tensor, float], k: int) -> None:
        """``value`` of a batch of ``k`` samples: a float (the CPU's loss, already read) or a tensor."""
        if isinstance(value, float) or not self.defer:
            term = float(value) * k
            self.floats[name] = self.floats[name] + term if name in self.floats else term
        else:
            self.kept.setdefault(name, []).append((value, k))

    def totals(self) -> dict[str, float]:
        """The sums as floats (one host sync per term on an accelerator)."""
        out = dict(self.floats)
        for name, pairs in self.kept.items():
            device = pairs[0][0].device  # a loss may give a constant term as a CPU tensor
            values = torch.stack([v.to(device) for v, _ in pairs])
            out[name] = float(
                values @ torch.tensor([float(k) for _, k in pairs], dtype=values.dtype, device=values.device)
            )
        return out


def _check_finite(pending: list[tuple[int, torch.Tensor]], stage: str, epoch: int, ckpt_dir: Path) -> None:
    """Raise DivergenceError naming the first non-finite loss among ``pending`` (step index, loss)."""
    if len(pending) == 1 and math.isfinite(float(pending[0][1])):  # the CPU case: one cheap float
        return
    values = torch.stack([v for _, v in pending])
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    j = int((~finite).nonzero()[0, 0])
    last = latest_training_checkpoint(ckpt_dir)
    raise DivergenceError(
        f"{stage}: loss became {float(values[j])} at epoch {epoch + 1}, step {pending[j][0] + 1}; training stopped"
        + (f" (last good checkpoint: {last})" if last else " (no checkpoint was written yet)")
    )


def _best_path(ckpt_dir: Path, name: str) -> Path:
    return ckpt_dir / "best" / f"{name}.safetensors"


def _save_best(ckpt_dir: Path, modules: dict[str, nn.Module]) -> None:
    from safetensors.torch import save_file

    tmp = ckpt_dir / ".best-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_file(state_tensors(module), str(tmp / f"{name}.safetensors"))
    final = ckpt_dir / "best"
    old = ckpt_dir / ".best-old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


class _Trainer:
    """What one ``fit`` call holds: the modules, their optimizer, scheduler, gradient scaler and
    convergence criterion, and the history so far. Built by :meth:`setup`, possibly advanced by
    :meth:`resume`, then driven epoch by epoch."""

    def __init__(
        self,
        modules: dict[str, nn.Module],
        spec: TrainSpec,
        device: torch.device,
        amp_dtype: Optional[torch.dtype],
        ckpt_dir: Path,
        run_key: str,
        stage: str,
        keep_checkpoints: int = 1,
    ) -> None:
        self.modules, self.spec, self.device, self.amp_dtype = modules, spec, device, amp_dtype
        self.ckpt_dir, self.run_key, self.stage = Path(ckpt_dir), run_key, stage
        self.keep_checkpoints = keep_checkpoints
        self.params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(spec, self.params)
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=spec.max_epochs)
            if spec.scheduler == "cosine"
            else None
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.conv = Convergence(
            monitor=spec.monitor,
            max_epochs=spec.max_epochs,
            patience=spec.patience,
            min_delta=spec.min_delta,
            target=spec.target,
        )
        self.history: list[dict[str, float]] = []
        self.start: int = 0
        self.resumed_from: Optional[int] = None
        self.stop_reason: Optional[str] = None
        # On CPU a loss is checked before it is applied; on an accelerator the check (a host sync that
        # stalls the device queue) runs once per CHECK_EVERY steps and still names the first bad step.
        self.check_every = 1 if device.type == "cpu" else CHECK_EVERY
        self.group = ddp.active()  # set only in the processes started by kdcore.train.ddp.run_distributed

    # -- resume ----------------------------------------------------------------------------------

    def resume(self) -> Optional[int]:
        """Continue after the latest checkpoint written for the same ``run_key`` (one written for
        another configuration is removed). Returns the epoch resumed from, or None."""
        latest = latest_training_checkpoint(self.ckpt_dir)
        if latest is None:
            return None
        meta, state = (
            load_training_checkpoint(latest, self.modules) if _same_run(latest, self.run_key) else (None, None)
        )
        if meta is None or state is None:  # both or neither
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)  # written for another configuration
            return None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        self.conv = Convergence.from_state(state["convergence"])
        self.history = list(state["history"])
        self.stop_reason = state.get("stop_reason")
        self.start = self.resumed_from = meta["epoch"] + 1
        return self.resumed_from

    # -- one step --------------------------------------------------------------------------------

    def step(
        self,
        step: StepFn,
        batch: BatchLike,
        i: int,
        last: bool,
        epoch: int,
        seed: int,
        stochastic: bool,
        running: _EpochSums,
        pending: list[tuple[int, torch.Tensor]],
    ) -> int:
        """Forward, finiteness check, backward and update for one batch; adds its loss terms to
        ``running``. Returns the number of samples this process trained on."""
        batch, share = self._shard(batch)
        # each call and op here is host time a small model's GPU step waits on: none that a bare
        # loop does not make where it can be helped (bench/step_overhead.py counts them)
        with seeded_step(seed, epoch, i) if stochastic else NO_CONTEXT, autocast(self.device, self.amp_dtype):
            loss, terms = step(batch)
        detached = as_float32(loss.detach())
        value: Union[torch.Tensor, float] = detached
        if self.check_every == 1:  # the CPU: the loss as a float, checked now and summed as it is
            value = float(detached)
            if not math.isfinite(value):
                _check_finite([(i, detached)], self.stage, epoch, self.ckpt_dir)
        else:
            pending.append((i, detached))
            if len(pending) >= self.check_every or last:
                _check_finite(pending, self.stage, epoch, self.ckpt_dir)
                pending.clear()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * share if self.group else loss).backward()
        if self.spec.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.spec.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        k = len(batch)
        running.add("train_loss", value, k)
        for name, term in terms.items():
            running.add(f"train_{name}", as_float32(term.detach()), k)
        return k

    def _shard(self, batch: BatchLike) -> tuple[BatchLike, float]:
        """This rank's share of a global batch (the whole batch in one process)."""
        if not self.group:
            return batch, 1.0
        if isinstance(batch, torch.Tensor):
            return self.group.shard(batch)
        rows, share = self.group.shard(torch.arange(len(batch)))
        return batch.part(rows), share

    # -- one epoch -------------------------------------------------------------------------------

    def train_epoch(
        self, step: StepFn, source: BatchSource, epoch: int, seed: int, stochastic: bool
    ) -> tuple[dict[str, float], int]:
        """One pass over the epoch's batches: (per-term sums, samples seen), summed over ranks."""
        for m in self.modules.values():
            m.train()
        running = _EpochSums(defer=self.device.type != "cpu")
        pending: list[tuple[int, torch.Tensor]] = []  # losses not yet checked for finiteness
        n_seen = 0
        batches = source.epoch(seed, epoch, self.spec.batch_size)
        last = len(batches) - 1
        for i, batch in enumerate(batches):
            n_seen += self.step(step, batch, i, i == last, epoch, seed, stochastic, running, pending)
        sums = running.totals()
        if self.group:
            sums, n_seen = self.group.end_epoch(self.modules, sums, n_seen)
        return sums, n_seen

    def end_epoch(
        self, epoch: int, sums: dict[str, float], n_seen: int, evaluate: Callable[[], dict[str, float]], e0: float
    ) -> dict[str, float]:
        """Step the schedule, validate, update the criterion; the epoch's metrics."""
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None:
            self.scheduler.step()
        train_seconds = time.perf_counter() - e0
        for m in self.modules.values():
            m.eval()
        val = evaluate()
        if self.group:
            val = self.group.from_main(val)
        metrics = {k: v / max(n_seen, 1) for k, v in sums.items()}
        metrics.update(val)
        metrics.update(lr=lr, epoch_seconds=time.perf_counter() - e0, samples_per_s=n_seen / max(train_seconds, 1e-9))
        if self.spec.monitor not in metrics:
            raise KeyError(f"evaluate() did not return the monitored metric {self.spec.monitor!r}")
        was_best = self.conv.improved(metrics[self.spec.monitor])
        self.stop_reason = self.conv.update(epoch, metrics[self.spec.monitor])
        if was_best and self.is_main:
            _save_best(self.ckpt_dir, self.modules)
        self.history.append(metrics)
        return metrics

    # -- checkpoint ------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.group is None or self.group.is_main

    def checkpoint(self, epoch: int) -> None:
        """Everything a resume needs, written after each epoch (by rank 0 alone)."""
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": torch.get_rng_state(),
            "convergence": self.conv.state(),
            "history": self.history,
            "stop_reason": self.stop_reason,
        }
        if self.is_main:
            save_training_checkpoint(
                self.ckpt_dir,
                epoch,
                self.modules,
                state,
                {"run_key": self.run_key, "stage": self.stage},
                keep=self.keep_checkpoints,
            )
        if self.group:
            self.group.barrier()

    def load_best(self) -> None:
        """Give every module the weights of the best epoch, in eval mode."""
        for name, module in self.modules.items():
            best = _best_path(self.ckpt_dir, name)
            if best.is_file():
                load_into(module, read_tensors(best), str(best))
            module.eval()


def fit(
    modules: dict[str, nn.Module],
    step: StepFn,
    n_train: Union[int, BatchSource],
    evaluate: Callable[[], dict[str, float]],
    spec: TrainSpec,
    *,
    ckpt_dir: Path,
    seed: int = 0,
    device: torch.device = CPU,
    amp_dtype: Optional[torch.dtype] = None,
    callbacks: Optional[TrainCallbacks] = None,
    run_key: str = "",
    stage: str = "train",
    keep_checkpoints: int = 1,
) -> FitResult:
    """Train ``modules`` with ``step(batch) -> (loss, terms)`` until the criterion holds.

    ``n_train`` is the number of in-memory training samples (``step`` then gets index tensors to
    slice its tensors with) or a batch source (:mod:`kdcore.train.batches`; ``step`` gets what it
    yields, e.g. a :class:`~kdcore.train.batches.Batch` read by a DataLoader).
    ``evaluate()`` returns validation metrics (it must contain ``spec.monitor``). A checkpoint of
    every module, the optimizer, scheduler, RNG and criterion is written after each epoch under
    ``ckpt_dir`` (the latest ``keep_checkpoints`` epochs stay); when one written for the same ``run_key``
    exists, training resumes after it.
    At the end the modules hold the weights of the best epoch.
    """
    cb = callbacks or TrainCallbacks()
    source: BatchSource = IndexBatches(n_train) if isinstance(n_train, int) else n_train
    t0 = time.perf_counter()
    trainer = _Trainer(modules, spec, device, amp_dtype, ckpt_dir, run_key, stage, keep_checkpoints)
    if trainer.resume() is not None:
        cb.on_resume(trainer.history)
    cb.on_fit_start(trainer.start, spec.max_epochs)
    stochastic = draws_randomness(modules.values())  # dropout: forward passes seeded per step (kdcore.train.rng)
    group = trainer.group
    step, unwrap = group.wrap_step(modules, step) if group else (step, None)
    for epoch in range(trainer.start, spec.max_epochs):
        if trainer.stop_reason:
            break
        e0 = time.perf_counter()
        cb.on_epoch_start(epoch)
        sums, n_seen = trainer.train_epoch(step, source, epoch, seed, stochastic)
        metrics = trainer.end_epoch(epoch, sums, n_seen, evaluate, e0)
        trainer.checkpoint(epoch)
        cb.on_epoch_end(epoch, metrics)
    if unwrap:
        unwrap()
    trainer.load_best()
    return FitResult(
        epochs_run=len(trainer.history),
        stop_reason=trainer.stop_reason or f"max_epochs {spec.max_epochs} reached",
        best_epoch=trainer.conv.best_epoch,
        best_value=trainer.conv.best,
        history=trainer.history,
        resumed_from=trainer.resumed_from,
        seconds=time.perf_counter() - t0,
    )


def _same_run(path: Path, run_key: str) -> bool:
    from kdcore.train.checkpoint import read_json

    try:
        return read_json(path / "meta.json").get("run_key") == run_key
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply not resumable
        return False
