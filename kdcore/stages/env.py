"""What every stage function shares: config, data on the right device, a work directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, cast

import torch
import torch.nn.functional as F
import torch.utils.deterministic
from torch import nn

from kdcore.config import PipelineConfig
from kdcore.data.bundle import DataBundle, Split
from kdcore.data.stream import ImageFileSplit, is_streamed
from kdcore.models import create_model
from kdcore.train import FitResult, TrainCallbacks, autocast_dtype, resolve_device, seed_everything
from kdcore.train.allocator import keep_heap
from kdcore.train.batches import Batch, LoaderBatches
from kdcore.train.device import forward_batch_size
from kdcore.train.rng import GLOBAL_RNG

# torch's intra-op thread count when kdcore was imported: torch's own start-up default
# (OMP_NUM_THREADS, else the machine's physical cores) unless the host process chose one before
_START_THREADS = torch.get_num_threads()


def stage_threads(configured: Optional[int]) -> int:
    """The intra-op threads a stage computes with: ``trainer.num_threads``, else the process's count
    at start-up. Never whatever another stage of the process set meanwhile."""
    return configured or _START_THREADS


def pin_compute(num_threads: Optional[int], deterministic: bool) -> None:
    """Fix what makes a CPU stage's numbers depend on its surroundings, in the calling thread.

    A convolution's or matmul's float sums are split over the intra-op threads, so the weights a
    stage trains differ bit for bit with the thread count. ``torch.set_num_threads`` sets the
    calling thread's OpenMP count (and the default of threads that have not computed yet), so each
    stage pins its own count in the thread that runs it, and a stage beside it cannot change it.
    ``deterministic``: torch's deterministic kernels where an op has several (CUDA's scatter and
    index adds; a warning, not a failure, where an op has none), process-wide; not the filling of
    new tensors with NaN that comes with them (a cost on every allocation, and kdcore reads no
    memory it did not write). glibc's heap is kept between steps (:mod:`kdcore.train.allocator`),
    process-wide, once.
    """
    keep_heap()
    torch.set_num_threads(stage_threads(num_threads))
    if deterministic and not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]  # read by torch


@dataclass
class StageResult:
    """What a stage function hands back: the artifact on disk, its hash, headline metrics."""

    path: Optional[Path]
    sha256: Optional[str]
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    fit: Optional[FitResult] = None
    model: Optional[nn.Module] = None
    files: list[Path] = field(default_factory=list)  # what the model needs beside its weights (vocab.json)


@dataclass
class StageEnv:
    cfg: PipelineConfig
    data: DataBundle
    workdir: Path
    callbacks: TrainCallbacks = field(default_factory=TrainCallbacks)
    device: torch.device = field(init=False)
    amp_dtype: Optional[torch.dtype] = field(init=False)
    _on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False, repr=False)
    _eval_sources: dict[str, LoaderBatches] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.device = resolve_device(self.cfg.trainer.device)
        self.amp_dtype = autocast_dtype(self.device, self.cfg.trainer.amp)
        pin_compute(self.cfg.trainer.num_threads, self.cfg.trainer.deterministic)
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of a split, moved to the stage's device once."""
        if name not in self._on_device:
            s: Split = getattr(self.data, name)
            self._on_device[name] = (s.x.to(self.device), s.y.to(self.device))
        return self._on_device[name]

    def seed(self, offset: int = 0) -> None:
        seed_everything(self.cfg.trainer.seed + offset, self.cfg.trainer.deterministic)

    def build(self, arch: str, kwargs: dict[str, Any], seed_offset: int) -> nn.Module:
        """A freshly initialised model, seeded with ``trainer.seed + seed_offset``."""
        with GLOBAL_RNG:  # seeding then drawing, never interleaved with another stage (kdcore.train.rng)
            self.seed(seed_offset)
            model = create_model(arch, in_channels=self.data.in_channels, num_classes=self.data.num_classes, **kwargs)
        return self.place(model)

    def place(self, model: nn.Module) -> nn.Module:
        """The model on this stage's device, in channels-last memory format when
        ``trainer.channels_last`` is set and the inputs are images."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @property
    def channels_last(self) -> bool:
        """Whether this stage's models run NHWC: ``trainer.channels_last`` and image inputs."""
        return self.cfg.trainer.channels_last and len(self.data.input_shape) == 3

    def save_model(self, model: nn.Module, path: Path, stage: str) -> tuple[str, list[Path]]:
        """Write the weights (+ JSON sidecar) and, beside them, the files the data needs at inference
        (text: the train-split ``vocab.json``); return (sha256 of the weights, extra files)."""
        from kdcore.train.checkpoint import save_model

        files = self.data.model_files(Path(path).parent)
        meta = {
            "stage": stage,
            "data_fingerprint": self.data.fingerprint,
            "modality": self.data.modality,
            "files": [f.name for f in files],
        }
        return save_model(model, path, meta), files

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for DDP ranks) without the open loaders: each process starts its own workers."""
        return {**self.__dict__, "_eval_sources": {}}

    # -- streamed data (kdcore.data.stream): the same questions answered through a DataLoader --

    @property
    def streaming(self) -> bool:
        """Whether the data is streamed from files rather than held as tensors."""
        return is_streamed(self.data.train)

    def example(self, split: str, n: int = 2) -> torch.Tensor:
        """The first ``n`` inputs of a split on the device (for probing shapes)."""
        if self.streaming:
            return getattr(self.data, split).x[:n].to(self.device)
        return self.split(split)[0][:n]

    def eval_batches(self, split: str, batch_size: Optional[int] = None) -> Iterator[Batch]:
        """A streamed split in order, eval transform, as :class:`Batch` objects on the device.

        Batches of :func:`forward_batch_size` (at most 256): the decoded batch, the prefetched ones and
        the model's activations on it are what a streamed stage holds beyond its weights, so this caps
        its memory whatever the split's size once the split holds a batch (with batches of 1,024, a
        70,000-image folder's training stages peaked 400 MB above a 7,000-image one's, whose whole
        validation split was one smaller batch)."""
        if split not in self._eval_sources:  # one loader per split, its workers kept between epochs
            s = getattr(self.data, split)
            self._eval_sources[split] = LoaderBatches(s.dataset(), len(s), self.device, num_workers=s.num_workers)
        source = self._eval_sources[split]
        batch_size = batch_size or forward_batch_size(self.device, tuple(self.data.input_shape), accelerator=256)
        yield from source.batches(list(torch.arange(len(source)).split(batch_size)))

    def train_source(self, items: Callable[[int, torch.Tensor], list[Any]]) -> LoaderBatches:
        """The streamed train split as a batch source for ``fit``; ``items(epoch, idx)`` says which
        view of each sample a batch shows (see :mod:`kdcore.data.stream`)."""
        s = cast(ImageFileSplit, self.data.train)  # streaming: the bundle's splits are ImageFileSplits
        return LoaderBatches(s.dataset(), len(s), self.device, num_workers=s.num_workers, items=items)

    def val_metrics(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Top-1 and cross-entropy of a classifier on a split, in memory or streamed."""
        if self.streaming:
            return classifier_val_batches(model, self.eval_batches(split), len(getattr(self.data, split)))
        return classifier_val(model, *self.split(split))

    def new_student(self) -> nn.Module:
        """The student at its seeded initialisation (the same for the baseline and distillation)."""
        return self.build(self.cfg.student.arch, self.cfg.student.kwargs, seed_offset=1)


def fp32(device: torch.device):
    """A block where autocast is off: the teacher's outputs (online or cached) are exact float32."""
    return torch.autocast(device_type=device.type, enabled=False)


@torch.no_grad()
def classifier_val(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: Optional[int] = None
) -> dict[str, float]:
    """Validation top-1 and cross-entropy of ``model`` on (x, y), ``batch_size`` samples a forward
    (default: :func:`forward_batch_size`; for inputs that are not images 256 on the CPU, 1,024 on
    accelerators)."""
    model.eval()
    most = 256 if x.device.type == "cpu" else 1024
    batch_size = batch_size or forward_batch_size(x.device, tuple(x.shape[1:]), accelerator=most)
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size]).float()
        yb = y[i : i + batch_size]
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    n = max(len(x), 1)
    return {"val_top1": correct / n, "val_loss": loss / n}


@torch.no_grad()
def classifier_val_batches(model: nn.Module, batches: Iterable[Batch], n: int) -> dict[str, float]:
    """:func:`classifier_val` over streamed batches."""
    model.eval()
    correct, loss = 0, 0.0
    for b in batches:
        logits = model(b.x).float()
        loss += float(F.cross_entropy(logits, b.y, reduction="sum"))
        correct += int((logits.argmax(1) == b.y).sum())
    n = max(n, 1)
    return {"val_top1": correct / n, "val_loss": loss / n}


def fit_summary(fit: FitResult) -> dict[str, Any]:
    last = fit.history[-1] if fit.history else {}
    return {
        "epochs_run": fit.epochs_run,
        "best_epoch": fit.best_epoch + 1,
        "best_value": fit.best_value,
        "stop_reason": fit.stop_reason,
        "resumed_from_epoch": fit.resumed_from,
        "seconds": round(fit.seconds, 3),
        **{f"last_{k}": v for k, v in last.items() if k.startswith("val_")},
    }
