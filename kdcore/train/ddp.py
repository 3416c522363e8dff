"""Training on several devices of one machine, and choosing a device per stage.

``run_distributed(fn, *args, world_size=N, device=...)`` starts N processes (forkserver; the gloo
backend on CPU, NCCL on CUDA, rank r on the r-th visible GPU) and calls the same stage function
``fn(*args)`` in each with a :class:`DistContext` active. :func:`kdcore.train.loop.fit` picks the
context up: it runs each training step as the forward of a DistributedDataParallel module holding
the trainable modules (so gradients are averaged across ranks whatever the loss is built from),
gives each rank its contiguous share of every index batch (the global batch is the same as in one
process, so is the gradient), takes rank 0's validation metrics and BatchNorm buffers at the end
of each epoch, and lets rank 0 alone write checkpoints. Rank 0's return value comes back to the
caller (CUDA tensors back on the caller's current device) and rank 0's training callbacks are
replayed on the caller's callbacks as they happen. An exception in any rank stops all of them and
is raised again in the caller.

BatchNorm statistics are per rank on CPU (SyncBatchNorm needs CUDA) and synchronised on CUDA.

``device_slot(name)``: while a stage runs in a thread, ``cuda`` means the least busy visible GPU
(torch counts only those in ``CUDA_VISIBLE_DEVICES``), so concurrent stages spread over the GPUs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pickle
import queue
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from kdcore.errors import ConfigError, KdflowError

# ---------------------------------------------------------------------------------------------
# Inside a rank


@dataclass
class DistContext:
    """This process's place in the group, as seen by ``fit``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's contiguous part of a global batch, and the factor that makes the average of
        the ranks' gradients equal the gradient of the global batch's mean loss."""
        part = torch.tensor_split(idx, self.world_size)[self.rank]
        return part, self.world_size * len(part) / max(len(idx), 1)

    def wrap_step(self, modules: dict[str, nn.Module], step: Callable) -> tuple[Callable, Callable[[], None]]:
        """The training step as the forward of one DDP module holding every trainable module.

        The loss is then the DDP module's output, so gradients are averaged across ranks whatever
        the loss is built from (logits, or intermediate features taken by hooks). Returns the
        wrapped step and the undo."""
        trainable = {k: m for k, m in modules.items() if any(p.requires_grad for p in m.parameters())}
        swapped = _to_sync_batchnorm(trainable) if self.device.type == "cuda" else []
        ddp = _StepModule(trainable, step)
        ddp = torch.nn.parallel.DistributedDataParallel(
            ddp, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            static_graph=True)  # the same parameters are used (or unused) at every step

        def undo() -> None:
            nonlocal ddp
            ddp = None
            for parent, leaf, original in swapped:
                setattr(parent, leaf, original)  # shares parameters and buffers with the SyncBatchNorm

        return (lambda idx: ddp(idx)), undo

    def end_epoch(self, modules: dict[str, nn.Module], sums: dict[str, float], count: int
                  ) -> tuple[dict[str, float], int]:
        """Rank 0's buffers (BatchNorm statistics) everywhere, and the epoch's sums over all ranks."""
        for m in modules.values():
            for b in m.buffers():
                dist.broadcast(b, src=0)
        keys = sorted(sums)  # the same on every rank
        t = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        values = t.cpu().tolist()
        return dict(zip(keys, values[:-1])), int(round(values[-1]))

    def from_main(self, obj: Any) -> Any:
        """Rank 0's value of ``obj`` on every rank (so every rank takes the same decisions)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


class _StepModule(nn.Module):
    def __init__(self, modules: dict[str, nn.Module], step: Callable) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.step = step

    def forward(self, idx: torch.Tensor) -> Any:
        return self.step(idx)


def _to_sync_batchnorm(modules: dict[str, nn.Module]) -> list[tuple[nn.Module, str, nn.Module]]:
    """Replace BatchNorm children by SyncBatchNorm (same tensors); returns what to put back."""
    swapped = []
    for m in modules.values():
        for parent in list(m.modules()):
            for leaf, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                    swapped.append((parent, leaf, child))
                    setattr(parent, leaf, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return swapped


_ACTIVE: Optional[DistContext] = None


def active() -> Optional[DistContext]:
    """The context of this process when it is a rank started by :func:`run_distributed`, else None."""
    return _ACTIVE


# ---------------------------------------------------------------------------------------------
# Moving the call into the ranks: CUDA tensors travel as CPU tensors and land on the receiver's
# current device; callbacks become relays to the caller's callbacks; dataclasses with derived
# (init=False) fields, such as a StageEnv holding tensors already moved to a device, are rebuilt
# from their init fields.

_RANK_STATE: dict[str, Any] = {}


def _rebuild_tensor(t: torch.Tensor, parameter: bool, requires_grad: bool) -> torch.Tensor:
    if torch.cuda.is_available():
        t = t.to(torch.device("cuda", torch.cuda.current_device()))
    if parameter:
        return nn.Parameter(t, requires_grad=requires_grad)
    return t.requires_grad_(requires_grad) if t.is_leaf and t.is_floating_point() else t


def _rebuild_dataclass(cls: type, kwargs: dict[str, Any]) -> Any:
    return cls(**kwargs)


def _relay_callbacks(index: int) -> Any:
    from kdcore.train.callbacks import TrainCallbacks

    relay = _RANK_STATE.get("relay")
    if relay is None:  # ranks other than 0 report nothing
        return TrainCallbacks()
    return _Relay(index, relay)


class _Relay:
    """Stands for a caller's TrainCallbacks in rank 0: every hook call is sent back to the caller."""

    def __init__(self, index: int, channel: Any) -> None:
        self._index, self._channel = index, channel

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)

        def hook(*args: Any, **kwargs: Any) -> None:
            self._channel.put((self._index, name, args, kwargs))

        return hook


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, callbacks: Optional[list] = None) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.callbacks = callbacks

    def reducer_override(self, obj: Any) -> Any:
        from kdcore.train.callbacks import TrainCallbacks

        if isinstance(obj, torch.Tensor) and obj.device.type not in ("cpu", "meta"):
            return _rebuild_tensor, (obj.detach().cpu(), isinstance(obj, nn.Parameter), obj.requires_grad)
        if self.callbacks is not None and isinstance(obj, TrainCallbacks):
            self.callbacks.append(obj)
            return _relay_callbacks, (len(self.callbacks) - 1,)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and any(
                not f.init for f in dataclasses.fields(obj)):
            return _rebuild_dataclass, (type(obj), {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
                                                    if f.init})
        return NotImplemented


def _dumps(obj: Any, callbacks: Optional[list] = None) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, callbacks).dump(obj)
    return buf.getvalue()


def _exception_bytes(exc: BaseException) -> bytes:
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
        return blob
    except Exception:  # noqa: BLE001 - an exception that does not travel is sent as text
        import traceback

        return pickle.dumps(RuntimeError("".join(traceback.format_exception(exc))))


def _rank_main(rank: int, world_size: int, backend: str, init_file: str, threads: int, payload: bytes,
               results: Any, relay: Any) -> None:
    global _ACTIVE
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    _RANK_STATE["relay"] = relay if rank == 0 else None
    try:
        fn, args, kwargs = pickle.loads(payload)
        _ACTIVE = DistContext(rank, world_size, device)
        out = fn(*args, **kwargs)
        _ACTIVE = None
        if rank == 0:
            results.put(("ok", rank, _dumps(out)))
    except BaseException as exc:
        results.put(("error", rank, _exception_bytes(exc)))
        raise
    finally:
        _ACTIVE = None
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# In the caller


def backend_for(device: torch.device, world_size: int) -> str:
    """``gloo`` on CPU, ``nccl`` on CUDA (with enough visible GPUs); a clear error otherwise."""
    if not dist.is_available():
        raise ConfigError("trainer.devices > 1 needs torch.distributed, which this PyTorch build lacks")
    if device.type == "cpu":
        return "gloo"
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if world_size > visible:
            shown = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
            raise ConfigError(f"trainer.devices = {world_size} but only {visible} CUDA device(s) are visible "
                              f"(CUDA_VISIBLE_DEVICES={shown}); lower trainer.devices")
        return "nccl"
    raise ConfigError(f"trainer.devices > 1 runs on cpu or cuda, not {device.type}")


def _start_method() -> str:
    """``forkserver`` where there is one: a clean process (no CUDA, no threads) that imported torch
    once and forks the ranks quickly; ``spawn`` elsewhere."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "kdcore.train.ddp", "kdcore.stages"])
    return "forkserver"


def run_distributed(fn: Callable[..., Any], *args: Any, world_size: int, device: torch.device,
                    timeout: Optional[float] = None, **kwargs: Any) -> Any:
    """Call ``fn(*args, **kwargs)`` in ``world_size`` DDP ranks; return rank 0's result."""
    if world_size < 2:
        return fn(*args, **kwargs)
    backend = backend_for(device, world_size)
    callbacks: list = []
    payload = _dumps((fn, args, kwargs), callbacks)
    threads = max(1, torch.get_num_threads() // world_size)
    method = _start_method()
    mp = torch.multiprocessing.get_context(method)
    results, relay = mp.Queue(), mp.Queue()
    with tempfile.TemporaryDirectory(prefix="kdflow-ddp-") as tmp:
        init_file = str(Path(tmp) / "rendezvous")
        procs = torch.multiprocessing.start_processes(
            _rank_main, args=(world_size, backend, init_file, threads, payload, results, relay),
            nprocs=world_size, join=False, start_method=method)
        outcome: dict[int, tuple[str, bytes]] = {}

        def drain() -> None:
            while True:
                try:
                    index, name, a, kw = relay.get_nowait()
                except queue.Empty:
                    break
                getattr(callbacks[index], name)(*a, **kw)
            while True:
                try:
                    kind, rank, blob = results.get_nowait()
                except queue.Empty:
                    break
                outcome[rank] = (kind, blob)

        try:
            while True:
                drain()
                if procs.join(timeout=0.2):
                    break
        except Exception as exc:  # a rank failed; the others were stopped by join()
            drain()
            errors = [pickle.loads(blob) for rank, (kind, blob) in sorted(outcome.items()) if kind == "error"]
            kdflow_errors = [e for e in errors if isinstance(e, KdflowError)]
            raise (kdflow_errors or errors or [exc])[0] from None
        finally:
            for p in procs.processes:
                if p.is_alive():
                    p.terminate()
        for _ in range(50):  # the result may arrive just after the processes ended
            drain()
            if 0 in outcome:
                break
            threading.Event().wait(0.1)
    if outcome.get(0, ("", b""))[0] != "ok":
        raise RuntimeError("distributed training ended without a result from rank 0")
    return pickle.loads(outcome[0][1])


# ---------------------------------------------------------------------------------------------
# One device per concurrent stage

_SLOTS_LOCK = threading.Lock()
_BUSY: dict[int, int] = {}


def least_busy(count: int, busy: dict[int, int]) -> int:
    """The device index in ``range(count)`` with the fewest stages on it (lowest index on ties)."""
    return min(range(count), key=lambda i: (busy.get(i, 0), i))


@contextlib.contextmanager
def device_slot(name: str) -> Iterator[Optional[int]]:
    """While the block runs in this thread, ``cuda`` means the least busy visible GPU.

    Only for ``auto``/``cuda`` with two or more visible GPUs; otherwise nothing changes (an
    explicit ``cuda:N`` is honoured as written). Yields the chosen index or None."""
    if name not in ("auto", "cuda") or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        yield None
        return
    with _SLOTS_LOCK:
        index = least_busy(torch.cuda.device_count(), _BUSY)
        _BUSY[index] = _BUSY.get(index, 0) + 1
    previous = torch.cuda.current_device()
    torch.cuda.set_device(index)  # the current device is per thread
    try:
        yield index
    finally:
        torch.cuda.set_device(previous)
        with _SLOTS_LOCK:
            _BUSY[index] -= 1
