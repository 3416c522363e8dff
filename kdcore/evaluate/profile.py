"""Cost of a model: parameters, size on disk, FLOPs per sample, CPU latency and throughput.

torch's benchmark timer and FLOP counter load on first use: they import torch.utils.benchmark (and
with it torch's C++-extension builder, which on a machine with a CUDA build of torch and no CUDA
runtime logs a warning) and triton, start-up that the CLI's commands reaching this package through
the registry's promotion rules never need."""

from __future__ import annotations

import copy

import torch
from safetensors.torch import save as safetensors_save
from torch import Tensor, nn

from kdcore.errors import KdflowError


def _state_dict_for_safetensors(model: nn.Module) -> dict[str, Tensor]:
    """State dict ready for safetensors: tied tensors kept once, every tensor contiguous and owning its memory."""
    tensors: dict[str, Tensor] = {}
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype]] = set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() > 0 and key in seen:  # tied weights are stored once, as save_model does
            continue
        seen.add(key)
        tensors[name] = tensor.detach().contiguous().clone()
    return tensors


def _batch(example: Tensor, batch_size: int) -> Tensor:
    return example.unsqueeze(0).expand(batch_size, *example.shape).contiguous()


def _median_seconds(model: nn.Module, x: Tensor, min_run_time: float, num_threads: int) -> float:
    @torch.inference_mode()
    def forward() -> None:
        model(x)

    from torch.utils.benchmark import Timer

    forward()  # warm-up outside the measurement
    timer = Timer(stmt="forward()", globals={"forward": forward}, num_threads=num_threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def model_profile(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    example: Tensor | None = None,
    latency: bool = True,
    throughput_batch: int = 256,
    min_run_time: float = 0.5,
    num_threads: int | None = None,
) -> dict[str, float]:
    """Profile a CPU copy of ``model`` (the caller's model is never touched).

    ``input_shape`` is the shape of ONE sample, without the batch dimension. ``example`` is an
    optional real sample of that shape (needed when inputs are not float tensors, e.g. token
    ids ``[T]``); otherwise a random float sample is used.

    Returns the counts ``params``, ``size_bytes`` (safetensors serialisation of the state
    dict, tied tensors once) and ``flops`` (per sample, batch of 1) as ints and, if
    ``latency``, ``latency_ms`` (median at batch 1) and ``throughput`` (samples/s at batch
    ``throughput_batch``), measured with ``num_threads`` threads (default: torch's current).
    """
    if throughput_batch < 1:
        raise KdflowError(f"model_profile: throughput_batch must be >= 1, got {throughput_batch}.")
    if example is None:
        example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))  # not the global one
    elif tuple(example.shape) != tuple(input_shape):
        raise KdflowError(
            f"model_profile: example has shape {tuple(example.shape)}, expected input_shape {tuple(input_shape)}."
        )
    example = example.detach().cpu()
    cpu_model = copy.deepcopy(model).cpu().eval()

    profile: dict[str, float] = {
        "params": sum(p.numel() for p in cpu_model.parameters()),
        "size_bytes": len(safetensors_save(_state_dict_for_safetensors(cpu_model))),
    }

    single = _batch(example, 1)
    from torch.utils.flop_counter import FlopCounterMode

    flop_counter = FlopCounterMode(display=False)
    # nn.MultiheadAttention's eval-mode fast path is one fused op the counter does not know (it would
    # count a transformer's head alone): count the layers' own matmuls instead, the same arithmetic
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.inference_mode(), flop_counter:
            cpu_model(single)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    profile["flops"] = flop_counter.get_total_flops()

    if latency:
        threads = num_threads if num_threads is not None else torch.get_num_threads()
        profile["latency_ms"] = _median_seconds(cpu_model, single, min_run_time, threads) * 1e3
        batch = _batch(example, throughput_batch)
        profile["throughput"] = throughput_batch / _median_seconds(cpu_model, batch, min_run_time, threads)
    return profile
