"""One training loop for every stage: checkpoint each epoch, resume, converge, report by callbacks."""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from kdcore.config import TrainSpec
from kdcore.errors import DivergenceError
from kdcore.train.checkpoint import (
    latest_training_checkpoint,
    load_into,
    load_training_checkpoint,
    read_tensors,
    save_training_checkpoint,
    state_tensors,
)
from kdcore.train import ddp
from kdcore.train.callbacks import TrainCallbacks
from kdcore.train.convergence import Convergence
from kdcore.train.device import autocast
from kdcore.train.rng import draws_randomness, seeded_step

StepFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


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
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay,
                               nesterov=spec.momentum > 0)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's shuffled index batches; a function of (seed, epoch) alone, so resume replays it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:  # a batch of one breaks BatchNorm
        batches.pop()
    return batches


CHECK_EVERY = 50


def _accumulate(running: dict[str, Any], name: str, value: torch.Tensor, k: int) -> None:
    """Add ``value * k`` to a running sum: a Python float on CPU (cheapest), a device tensor elsewhere."""
    term = float(value) * k if value.device.type == "cpu" else value * k
    running[name] = running[name] + term if name in running else term


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


def fit(
    modules: dict[str, nn.Module],
    step: StepFn,
    n_train: int,
    evaluate: Callable[[], dict[str, float]],
    spec: TrainSpec,
    *,
    ckpt_dir: Path,
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    amp_dtype: Optional[torch.dtype] = None,
    callbacks: Optional[TrainCallbacks] = None,
    run_key: str = "",
    stage: str = "train",
) -> FitResult:
    """Train ``modules`` with ``step(batch_indices) -> (loss, terms)`` until the criterion holds.

    ``evaluate()`` returns validation metrics (it must contain ``spec.monitor``). A checkpoint of
    every module, the optimizer, scheduler, RNG and criterion is written after each epoch under
    ``ckpt_dir``; when one written for the same ``run_key`` exists, training resumes after it.
    At the end the modules hold the weights of the best epoch.
    """
    cb = callbacks or TrainCallbacks()
    ckpt_dir = Path(ckpt_dir)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    optimizer = make_optimizer(spec, params)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.max_epochs)
                 if spec.scheduler == "cosine" else None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    conv = Convergence(monitor=spec.monitor, max_epochs=spec.max_epochs, patience=spec.patience,
                       min_delta=spec.min_delta, target=spec.target)
    history: list[dict[str, float]] = []
    start, resumed_from, stop_reason = 0, None, None
    t0 = time.perf_counter()

    latest = latest_training_checkpoint(ckpt_dir)
    if latest is not None:
        meta, state = load_training_checkpoint(latest, modules) if _same_run(latest, run_key) else (None, None)
        if state is None:
            shutil.rmtree(ckpt_dir, ignore_errors=True)  # written for another configuration
        else:
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state.get("scheduler"):
                scheduler.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"])
            conv = Convergence.from_state(state["convergence"])
            history = list(state["history"])
            stop_reason = state.get("stop_reason")
            start = resumed_from = meta["epoch"] + 1

    if resumed_from is not None:
        cb.on_resume(history)
    cb.on_fit_start(start, spec.max_epochs)
    # On CPU a loss is checked before it is applied; on an accelerator the check (a host sync that
    # stalls the device queue) runs once per CHECK_EVERY steps and still names the first bad step.
    check_every = 1 if device.type == "cpu" else CHECK_EVERY
    group = ddp.active()  # set only in the processes started by kdcore.train.ddp.run_distributed
    stochastic = draws_randomness(modules.values())  # dropout: forward passes seeded per step (kdcore.train.rng)
    step, unwrap = group.wrap_step(modules, step) if group else (step, None)
    for epoch in range(start, spec.max_epochs):
        if stop_reason:
            break
        e0 = time.perf_counter()
        cb.on_epoch_start(epoch)
        for m in modules.values():
            m.train()
        running: dict[str, Any] = {}  # per-term sums kept on the device: no host sync per step
        pending: list[tuple[int, torch.Tensor]] = []  # losses not yet checked for finiteness
        n_seen = 0
        batches = _batches(n_train, spec.batch_size, seed, epoch)
        for i, idx in enumerate(batches):
            idx, share = group.shard(idx) if group else (idx, 1.0)
            with seeded_step(seed, epoch, i, stochastic), autocast(device, amp_dtype):
                loss, terms = step(idx)
            detached = loss.detach().float()
            pending.append((i, detached))
            if len(pending) >= check_every or i == len(batches) - 1:
                _check_finite(pending, stage, epoch, ckpt_dir)
                pending = []
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * share if group else loss).backward()
            if spec.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            k = len(idx)
            n_seen += k
            _accumulate(running, "train_loss", detached, k)
            for name, term in terms.items():
                _accumulate(running, f"train_{name}", term.detach().float(), k)
        sums = {name: float(total) for name, total in running.items()}  # one sync per epoch
        if group:
            sums, n_seen = group.end_epoch(modules, sums, n_seen)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        train_seconds = time.perf_counter() - e0
        for m in modules.values():
            m.eval()
        val = evaluate()
        if group:
            val = group.from_main(val)
        metrics = {k: v / max(n_seen, 1) for k, v in sums.items()}
        metrics.update(val)
        metrics.update(lr=lr, epoch_seconds=time.perf_counter() - e0, samples_per_s=n_seen / max(train_seconds, 1e-9))
        if spec.monitor not in metrics:
            raise KeyError(f"evaluate() did not return the monitored metric {spec.monitor!r}")
        was_best = conv.improved(metrics[spec.monitor])
        stop_reason = conv.update(epoch, metrics[spec.monitor])
        if was_best and (group is None or group.is_main):
            _save_best(ckpt_dir, modules)
        history.append(metrics)
        state: dict[str, Any] = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": torch.get_rng_state(),
            "convergence": conv.state(),
            "history": history,
            "stop_reason": stop_reason,
        }
        if group is None or group.is_main:
            save_training_checkpoint(ckpt_dir, epoch, modules, state, {"run_key": run_key, "stage": stage})
        if group:
            group.barrier()
        cb.on_epoch_end(epoch, metrics)

    if unwrap:
        unwrap()
    if stop_reason is None:
        stop_reason = f"max_epochs {spec.max_epochs} reached"
    for name, module in modules.items():
        best = _best_path(ckpt_dir, name)
        if best.is_file():
            load_into(module, read_tensors(best), str(best))
        module.eval()
    return FitResult(
        epochs_run=len(history), stop_reason=stop_reason, best_epoch=conv.best_epoch, best_value=conv.best,
        history=history, resumed_from=resumed_from, seconds=time.perf_counter() - t0,
    )


def _same_run(path: Path, run_key: str) -> bool:
    from kdcore.train.checkpoint import read_json

    try:
        return read_json(path / "meta.json").get("run_key") == run_key
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is simply not resumable
        return False
