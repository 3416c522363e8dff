"""Where a training epoch's batches come from: index slices of in-memory tensors, or a DataLoader.

``fit`` asks a batch source for one epoch's batches with ``source.epoch(seed, epoch, batch_size)``.
The order of samples is the same function of (seed, epoch) for both sources
(:func:`shuffled_batches`), so a resumed run replays it and a streamed epoch visits the samples in
the order an in-memory one does.

- :class:`IndexBatches` yields index tensors; the step slices its own tensors (today's path).
- :class:`LoaderBatches` yields :class:`Batch` objects (sample indices, inputs, labels) read by a
  ``DataLoader`` whose workers decode files; the indices let a step look up cached teacher outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, Union

import torch

from kdcore.train.allocator import trim_heap


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's shuffled index batches; a function of (seed, epoch) alone, so resume replays it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    batches = list(perm.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:  # a batch of one breaks BatchNorm
        batches.pop()
    return batches


@dataclass
class Batch:
    """A batch read from files: dataset indices ``idx`` [B], inputs ``x`` and labels ``y`` on the
    device, and ``extra`` (e.g. the crop parameters each sample was cut with)."""

    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    extra: Optional[dict[str, torch.Tensor]] = None

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    def part(self, index: torch.Tensor) -> "Batch":
        """The rows ``index`` (positions in this batch) of every field."""
        extra = {k: v[index.to(v.device)] for k, v in (self.extra or {}).items()} or None
        return Batch(self.idx[index], self.x[index.to(self.x.device)], self.y[index.to(self.y.device)], extra)


BatchLike = Union[torch.Tensor, Batch]


class EpochBatches(Protocol):
    """One epoch's batches, as ``fit`` uses them: counted, then iterated once."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def epoch(self, seed: int, epoch: int, batch_size: int) -> EpochBatches: ...


class IndexBatches:
    """The in-memory source: shuffled index tensors over ``n`` samples."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def epoch(self, seed: int, epoch: int, batch_size: int) -> list[torch.Tensor]:
        return shuffled_batches(self.n, batch_size, seed, epoch)


# What the forkserver of DataLoader workers and DDP ranks imports once, before it forks any of them:
# whatever a worker needs beyond this it imports itself, each worker of each loader. Image decoding
# and augmentation (kdcore/data/stream.py) use torchvision: a worker's start-up took 2.6-2.7 s of CPU
# when it was not here, 0.05-0.06 s with it (bench/loader_workers.py, medians).
FORKSERVER_PRELOAD = ["torch", "torchvision.io", "torchvision.transforms.v2", "kdcore.train.ddp", "kdcore.stages"]


def worker_context():
    """The start method of DataLoader workers. In a process with one thread (not counting other
    DataLoaders' queue-feeder and pin-memory threads), the platform's default
    (fork on Linux: fastest). Workers forked straight from a process running threads (Prefect's
    task threads, MLflow's database sessions) can inherit a lock held by another thread and die, so
    there ``forkserver`` where there is one: a clean process that imported FORKSERVER_PRELOAD once
    and forks workers from there."""
    import threading

    own = [t for t in threading.enumerate() if t.name != "QueueFeederThread" and "_pin_memory_loop" not in t.name]
    if len(own) == 1:  # the main thread, beside other loaders' queue feeders and pin-memory threads
        return None
    return _server_context()


def _server_context():
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)  # the same list as kdcore.train.ddp's ranks
    return ctx


def start_worker_server() -> bool:
    """Start the forkserver that :func:`worker_context` gives DataLoaders in a process running
    threads, now: for a process whose loaders will run beside other threads (a Prefect flow's
    stages). The server imports FORKSERVER_PRELOAD (seconds) in its own process while this
    one goes on, instead of when the first loader asks it for workers. Returns whether one runs."""
    if _server_context().get_start_method() != "forkserver":
        return False
    from multiprocessing import forkserver

    forkserver.ensure_running()  # spawns the server and returns; the server preloads in the background
    return True


def _batched(batch: Any) -> Any:
    """The collate function of datasets that build whole batches (``__getitems__``): nothing to do."""
    return batch


def as_input(dataset: Any, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader's ``x`` on ``device`` as the model's input: a dataset that ships compact batches
    (e.g. uint8 images) turns them into inputs with its ``to_input`` after the copy."""
    x = x.to(device, non_blocking=True)
    to_input = getattr(dataset, "to_input", None)
    return to_input(x) if to_input is not None else x


def make_loader(
    dataset: Any,
    batch_sampler: Any,
    num_workers: int,
    device: torch.device,
    *,
    persistent: bool = False,
    prefetch_factor: int = 4,
):
    """A DataLoader of the given batches: workers from :func:`worker_context`, pinned memory on CUDA;
    a dataset with ``__getitems__`` builds each batch itself (no per-sample collation). Workers
    forked from this process start after the kept heap went back to the kernel (``trim_heap``): here
    for a loader that is iterated at once, at the first pass for a persistent one (LoaderBatches)."""
    from torch.utils.data import DataLoader

    workers = num_workers > 0
    context = worker_context() if workers else None
    if workers and context is None and not persistent:  # forked from this process, heap and all
        trim_heap()
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=persistent and workers,
        prefetch_factor=prefetch_factor if workers else None,
        multiprocessing_context=context,
        collate_fn=_batched if callable(getattr(dataset, "__getitems__", None)) else None,
    )


class _EpochSampler:
    """A batch sampler whose batches are set by the owner before each pass over the loader (the
    loader keeps its workers between epochs; the sampler runs in the main process)."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []

    def __iter__(self) -> Iterator[list[Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class LoaderBatches:
    """A streaming source: each epoch, the shuffled index batches become items
    ``items(epoch, idx) -> list`` read by one persistent ``DataLoader`` over ``dataset``; each batch
    arrives as a :class:`Batch` on ``device``.

    ``dataset[item]`` returns a dict with ``idx``, ``x``, ``y`` (and optionally more tensors, kept
    in ``Batch.extra``)."""

    def __init__(
        self,
        dataset: Any,
        n: int,
        device: torch.device,
        *,
        num_workers: int = 0,
        items: Optional[Callable[[int, torch.Tensor], list[Any]]] = None,
        prefetch_factor: int = 4,
    ) -> None:
        self.n, self.device, self.dataset = int(n), device, dataset
        self.items = items or (lambda epoch, idx: idx.tolist())
        self.sampler = _EpochSampler()
        self.loader = make_loader(
            dataset, self.sampler, num_workers, device, persistent=True, prefetch_factor=prefetch_factor
        )
        self.started = False  # the persistent workers start with the first pass, not here

    def __len__(self) -> int:
        return self.n

    def epoch(self, seed: int, epoch: int, batch_size: int) -> "_EpochBatches":
        self.sampler.batches = [self.items(epoch, idx) for idx in shuffled_batches(self.n, batch_size, seed, epoch)]
        return _EpochBatches(self)

    def batches(self, index_batches: list[torch.Tensor], epoch: int = 0) -> "_EpochBatches":
        """A pass over given index batches (in order), e.g. for evaluation."""
        self.sampler.batches = [self.items(epoch, idx) for idx in index_batches]
        return _EpochBatches(self)


class _EpochBatches:
    def __init__(self, source: LoaderBatches) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source.sampler)

    def __iter__(self) -> Iterator[Batch]:
        src = self.source
        if not src.started:  # the workers fork now: after the steps since make_loader freed their memory
            src.started = True
            if src.loader.num_workers and src.loader.multiprocessing_context is None:
                trim_heap()
        dev, ds = src.device, src.dataset
        for raw in src.loader:
            extra = {k: v for k, v in raw.items() if k not in ("idx", "x", "y")}
            yield Batch(raw["idx"], as_input(ds, raw["x"], dev), raw["y"].to(dev, non_blocking=True), extra or None)
