"""Training on several devices of one machine, and choosing a device per stage.

``run_distributed(fn, *args, world_size=N, device=...)`` starts N processes with torchrun's launcher
(``torch.distributed.launcher.api.elastic_launch``: a c10d rendezvous, one machine or several; the
gloo backend on CPU, NCCL on CUDA, rank r on the r-th device its stage was given) and calls the
same stage function ``fn(*args)`` in each with a :class:`DistContext` active. :func:`kdcore.train.loop.fit` picks the
context up: it runs each training step as the forward of a DistributedDataParallel module holding
the trainable modules (so gradients are averaged across ranks whatever the loss is built from),
gives each rank its contiguous share of every index batch (the global batch is the same as in one
process, so is the gradient), takes rank 0's validation metrics and BatchNorm buffers at the end
of each epoch, and lets rank 0 alone write checkpoints. Rank 0's return value comes back to the
caller (CUDA tensors back on the caller's current device) and rank 0's training callbacks are
replayed on the caller's callbacks as they happen. An exception in any rank stops all of them and
is raised again in the caller.

BatchNorm statistics are per rank on CPU (SyncBatchNorm needs CUDA) and synchronised on CUDA.

``device_slot(name)``: while a stage runs in a thread, ``cuda`` means the least busy visible GPU,
counted across processes by lock files under ``KDFLOW_HOME/locks`` (torch counts only the GPUs in
``CUDA_VISIBLE_DEVICES``), so concurrent stages of one or several flow runs and workers spread over
the GPUs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import pickle
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

from kdcore.errors import ConfigError, KdflowError
from kdcore.train.allocator import keep_heap

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
        ddp: Optional[nn.Module] = torch.nn.parallel.DistributedDataParallel(
            _StepModule(trainable, step),
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            static_graph=True,
        )  # the same parameters are used (or unused) at every step

        def undo() -> None:
            nonlocal ddp
            ddp = None
            for parent, leaf, original in swapped:
                setattr(parent, leaf, original)  # shares parameters and buffers with the SyncBatchNorm

        def wrapped(idx: Any) -> Any:
            assert ddp is not None, "the wrapped step was called after its undo()"
            return ddp(idx)

        return wrapped, undo

    def end_epoch(
        self, modules: dict[str, nn.Module], sums: dict[str, float], count: int
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
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
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
# The call as it travels to the ranks. torchrun's launcher pickles the entrypoint's arguments with
# multiprocessing; before that, the arguments are prepared: the caller's TrainCallbacks become
# file relays (rank 0 appends each hook call to a JSON-lines file, which the caller follows and
# replays on its callbacks as it grows), and dataclasses with derived (init=False) fields, such as a
# StageEnv holding tensors already moved to the caller's device, are rebuilt in the rank from their
# init fields (so they land on the rank's device).


@dataclass
class _Rebuild:
    cls: type
    kwargs: dict[str, Any]


@dataclass
class _RelayMark:
    index: int


class _FileRelay:
    """Stands for a caller's TrainCallbacks in rank 0: each hook call becomes a line of the events file."""

    def __init__(self, index: int, path: str) -> None:
        self._index, self._path = index, path

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("_"):
            raise AttributeError(name)

        def hook(*args: Any) -> None:
            line = json.dumps({"i": self._index, "hook": name, "args": list(args)})
            with open(self._path, "a") as fh:
                fh.write(line + "\n")

        return hook


def _outbound(obj: Any, callbacks: list) -> Any:
    """The caller's side: callbacks -> relay marks, derived dataclasses -> rebuild recipes."""
    from kdcore.train.callbacks import TrainCallbacks

    if isinstance(obj, TrainCallbacks):
        callbacks.append(obj)
        return _RelayMark(len(callbacks) - 1)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = dataclasses.fields(obj)
        if any(not f.init for f in fields):
            return _Rebuild(type(obj), {f.name: _outbound(getattr(obj, f.name), callbacks) for f in fields if f.init})
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_outbound(v, callbacks) for v in obj)
    if isinstance(obj, dict):
        return {k: _outbound(v, callbacks) for k, v in obj.items()}
    return obj


def _inbound(obj: Any, events: Optional[str]) -> Any:
    """The rank's side: relay marks -> file relays (rank 0) or silent callbacks, recipes -> objects."""
    from kdcore.train.callbacks import TrainCallbacks

    if isinstance(obj, _RelayMark):
        return _FileRelay(obj.index, events) if events else TrainCallbacks()
    if isinstance(obj, _Rebuild):
        return obj.cls(**{k: _inbound(v, events) for k, v in obj.kwargs.items()})
    if isinstance(obj, (list, tuple)):
        return type(obj)(_inbound(v, events) for v in obj)
    if isinstance(obj, dict):
        return {k: _inbound(v, events) for k, v in obj.items()}
    return obj


@dataclass
class _OnDevice:
    """A tensor or module of rank 0's result that was on an accelerator, travelling on the CPU."""

    value: Any


def _map(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """``obj`` with ``fn`` applied to every tensor, module and :class:`_OnDevice` inside it."""
    if isinstance(obj, (torch.Tensor, nn.Module, _OnDevice)):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            mapped = _map(value, fn)
            if mapped is not value:
                object.__setattr__(obj, f.name, mapped)
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    return obj


def _off_device(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.device.type not in ("cpu", "meta"):
        return _OnDevice(x.detach().cpu())
    if isinstance(x, nn.Module) and any(t.device.type != "cpu" for t in [*x.parameters(), *x.buffers()]):
        return _OnDevice(x.to("cpu"))
    return x


def _back_on_device(x: Any) -> Any:
    if not isinstance(x, _OnDevice):
        return x
    if torch.cuda.is_available():
        return x.value.to(torch.device("cuda", torch.cuda.current_device()))
    return x.value


def _rank_entry(payload: tuple, backend: str, devices: list[int], threads: int, events: str, errors: str) -> Any:
    """What torchrun runs in every rank: join the group (env:// set by the launcher), call the stage."""
    global _ACTIVE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if backend == "nccl":
        index = devices[local_rank] if local_rank < len(devices) else local_rank
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    keep_heap()  # each rank is a process of its own: its heap kept between steps, as the stages' are
    torch.set_num_threads(threads)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        fn, args, kwargs = _inbound(payload, events if rank == 0 else None)
        _ACTIVE = DistContext(rank, world_size, device)
        out = fn(*args, **kwargs)
        return _map(out, _off_device) if rank == 0 else None
    except BaseException as exc:
        with open(Path(errors) / f"rank-{rank}.pkl", "wb") as fh:
            fh.write(_exception_bytes(exc))
        raise
    finally:
        _ACTIVE = None
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _exception_bytes(exc: BaseException) -> bytes:
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
        return blob
    except Exception:  # noqa: BLE001 - an exception that does not travel is sent as text
        import traceback

        return pickle.dumps(RuntimeError("".join(traceback.format_exception(exc))))


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
            raise ConfigError(
                f"trainer.devices = {world_size} but only {visible} CUDA device(s) are visible "
                f"(CUDA_VISIBLE_DEVICES={shown}); lower trainer.devices"
            )
        return "nccl"
    raise ConfigError(f"trainer.devices > 1 runs on cpu or cuda, not {device.type}")


def _start_method() -> str:
    """``forkserver`` where there is one: a clean process (no CUDA, no threads) that imported torch
    (and the rest of FORKSERVER_PRELOAD) once and forks the ranks quickly; ``spawn`` elsewhere."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    from kdcore.train.batches import FORKSERVER_PRELOAD  # one list: DataLoader workers share the server

    multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
    return "forkserver"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Follower:
    """Replays the events file's lines on the caller's callbacks, in a thread, as rank 0 writes them."""

    def __init__(self, path: Path, callbacks: list) -> None:
        self.path, self.callbacks, self.offset = path, callbacks, 0
        self.stop = threading.Event()
        context = contextvars.copy_context()  # the caller's (an orchestrator's run context reaches the callbacks)
        self.thread = threading.Thread(target=context.run, args=(self._loop,), daemon=True)
        self.error: Optional[BaseException] = None

    def _drain(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as fh:
            fh.seek(self.offset)
            while True:
                line = fh.readline()
                if not line.endswith("\n"):  # not complete yet
                    break
                self.offset += len(line.encode())
                event = json.loads(line)
                getattr(self.callbacks[event["i"]], event["hook"])(*event["args"])

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self._drain()
            except BaseException as exc:  # noqa: BLE001 - raised in the caller after the run
                self.error = exc
                return

    def __enter__(self) -> "_Follower":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        if self.error is None:
            self._drain()
        if self.error is not None and exc[0] is None:
            raise self.error


def run_distributed(
    fn: Callable[..., Any],
    *args: Any,
    world_size: int,
    device: torch.device,
    nnodes: Optional[int] = None,
    rdzv_endpoint: Optional[str] = None,
    **kwargs: Any,
) -> Any:
    """Call ``fn(*args, **kwargs)`` in ``world_size`` DDP ranks per node, launched by torchrun's API
    (``torch.distributed.launcher.api.elastic_launch``); return rank 0's result.

    One machine by default (a c10d rendezvous on a free local port). Several machines: every machine
    runs the same stage with ``nnodes`` (or ``KDFLOW_NNODES``) and one ``rdzv_endpoint`` (or
    ``KDFLOW_RDZV_ENDPOINT``, ``host:port``) that all of them reach. On CUDA, rank r of a machine
    takes the r-th device of the enclosing :func:`device_slot` (else the r-th visible GPU)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nnodes = int(nnodes or os.environ.get("KDFLOW_NNODES", "1"))
    rdzv_endpoint = rdzv_endpoint or os.environ.get("KDFLOW_RDZV_ENDPOINT")
    if world_size < 2 and nnodes < 2:
        return fn(*args, **kwargs)
    if nnodes > 1 and not rdzv_endpoint:
        raise ConfigError(
            f"training on {nnodes} machines needs a rendezvous endpoint host:port that all of them "
            "reach (KDFLOW_RDZV_ENDPOINT)"
        )
    backend = backend_for(device, world_size)
    devices = current_devices() or list(range(world_size))
    callbacks: list = []
    payload = _outbound((fn, args, kwargs), callbacks)
    threads = max(1, torch.get_num_threads() // world_size)
    config = LaunchConfig(
        min_nodes=nnodes,
        max_nodes=nnodes,
        nproc_per_node=world_size,
        rdzv_backend="c10d",
        rdzv_endpoint=rdzv_endpoint or f"127.0.0.1:{_free_port()}",
        run_id=f"kdflow-{os.getpid()}-{id(payload)}",
        max_restarts=0,
        monitor_interval=0.1,
        start_method=_start_method(),
    )
    handlers = _signal_handlers()
    with tempfile.TemporaryDirectory(prefix="kdflow-ddp-") as tmp:
        events, errors = Path(tmp) / "events.jsonl", Path(tmp) / "errors"
        errors.mkdir()
        try:
            with _Follower(events, callbacks):
                results = elastic_launch(config, _rank_entry)(
                    payload, backend, devices, threads, str(events), str(errors)
                )
        except ChildFailedError as exc:
            raised = [pickle.loads(p.read_bytes()) for p in sorted(errors.glob("rank-*.pkl"))]
            kdflow_errors = [e for e in raised if isinstance(e, KdflowError)]
            raise (kdflow_errors or raised or [RuntimeError(f"distributed training failed: {exc}")])[0] from None
        finally:
            _restore_signal_handlers(handlers)
    return _map(results.get(0) if isinstance(results, dict) else None, _back_on_device)


def _signal_handlers() -> dict:
    """The main thread's signal handlers (torchrun's launcher installs its own there)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}


def _restore_signal_handlers(handlers: dict) -> None:
    import signal

    for sig, handler in handlers.items():
        if handler is not None:
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# Devices for concurrent stages, across processes
#
# Every visible GPU has a row of lock files under ``<lock_dir>/<device id>.<k>.lock``: holding
# slot k of a device means k other stages were on it when this one started. A stage takes the free
# slot with the lowest k, lowest device first, so stages of any number of threads, flow runs and
# workers sharing one lock directory (``KDFLOW_HOME/locks``) spread over the GPUs and share one only
# when every GPU is taken. A device is named by its physical id (its entry in CUDA_VISIBLE_DEVICES,
# else its index), so workers given different CUDA_VISIBLE_DEVICES still agree. The OS releases a
# dead process's locks.

MAX_PER_DEVICE = 64
_CURRENT = threading.local()


def visible_device_ids(count: int) -> list[str]:
    """Physical names of the ``count`` visible CUDA devices: CUDA_VISIBLE_DEVICES entries, else indices."""
    shown = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return [shown[i] if i < len(shown) else str(i) for i in range(count)]


def default_lock_dir() -> Path:
    return Path(os.environ.get("KDFLOW_HOME", ".kdflow")).expanduser() / "locks" / "devices"


def acquire_devices(ids: list[str], want: int, lock_dir: Path) -> tuple[list[int], list[Any]]:
    """Take ``want`` distinct devices among ``ids`` (the least busy, across processes); returns their
    indices and the held locks (release them with :func:`release`)."""
    from filelock import FileLock, Timeout

    lock_dir.mkdir(parents=True, exist_ok=True)
    chosen: list[int] = []
    held: list[Any] = []
    for k in range(MAX_PER_DEVICE):
        for i, dev in enumerate(ids):
            if len(chosen) == want:
                return chosen, held
            if i in chosen:
                continue
            lock = FileLock(str(lock_dir / f"gpu-{dev}.{k}.lock"), thread_local=False)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            chosen.append(i)
            held.append(lock)
    if len(chosen) < want:
        release(held)
        raise KdflowError(f"no free device slot among {len(ids)} GPU(s) under {lock_dir}")
    return chosen, held


def release(held: list[Any]) -> None:
    for lock in held:
        lock.release()


def current_devices() -> Optional[list[int]]:
    """The device indices the enclosing :func:`device_slot` of this thread took (None outside one)."""
    return getattr(_CURRENT, "devices", None)


@contextlib.contextmanager
def device_slot(name: str, count: int = 1, lock_dir: Optional[Path] = None) -> Iterator[Optional[int]]:
    """While the block runs in this thread, ``cuda`` means the least busy visible GPU (counted
    across processes by lock files under ``lock_dir``, default ``KDFLOW_HOME/locks/devices``).

    ``count`` devices are taken (a DDP stage's ranks: :func:`run_distributed` puts rank r on the
    r-th). Only for ``auto``/``cuda`` with two or more visible GPUs; otherwise nothing changes (an
    explicit ``cuda:N`` is honoured as written). Yields the first chosen index or None."""
    if name not in ("auto", "cuda") or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        yield None
        return
    ids = visible_device_ids(torch.cuda.device_count())
    chosen, held = acquire_devices(ids, min(count, len(ids)), Path(lock_dir) if lock_dir else default_lock_dir())
    previous = torch.cuda.current_device()
    outer = current_devices()
    torch.cuda.set_device(chosen[0])  # the current device is per thread
    _CURRENT.devices = chosen
    try:
        yield chosen[0]
    finally:
        _CURRENT.devices = outer
        torch.cuda.set_device(previous)
        release(held)
