"""What the sequence models (``rnn.py``, ``transformer.py``) share: reading the one input tensor,
the front end, and pooling over valid time steps.

Inputs (one tensor, so every stage, hook and tracker handles them like images):

* tokens: int64 ``[N, T]`` of token ids padded with 0 (``PAD``) at the end;
* frames: float ``[N, T, F + 1]`` whose last channel is a validity mask (1.0 real frame, 0.0
  padding) and whose first F channels are the features.

A sample's length is its number of valid steps (at least 1), so padding never changes a prediction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from kdcore.errors import KdflowError

INPUTS = ("tokens", "frames")
POOLINGS = ("last", "mean", "attention")


def check_choice(arch: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise KdflowError(f"model {arch!r}: {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_int(arch: str, name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise KdflowError(f"model {arch!r}: {name} must be an integer >= {low}, got {value!r}")
    return value


def check_bool(arch: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise KdflowError(f"model {arch!r}: {name} must be true or false, got {value!r}")
    return value


def check_dropout(arch: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise KdflowError(f"model {arch!r}: dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def front_end(inputs: str, in_channels: int, embed_dim: int) -> nn.Module:
    """Token embedding (``in_channels`` = vocabulary size, PAD row kept at zero) or a linear frame
    projection (``in_channels`` = features per frame)."""
    if inputs == "tokens":
        return nn.Embedding(in_channels, embed_dim, padding_idx=0)
    return nn.Linear(in_channels, embed_dim)


def read_input(x: Tensor, inputs: str, arch: str) -> tuple[Tensor, Tensor]:
    """(features, lengths) of a batch: token ids ``[N, T]`` or frames ``[N, T, F]``; lengths int64 ``[N]`` >= 1."""
    if inputs == "tokens":
        if x.dim() != 2 or x.is_floating_point():
            raise KdflowError(f"model {arch!r} takes int64 token ids [N, T], got {x.dtype} {tuple(x.shape)}")
        valid = x != 0
        feats = x
    else:
        if x.dim() != 3 or not x.is_floating_point() or x.shape[-1] < 2:
            raise KdflowError(
                f"model {arch!r} takes float frames [N, T, F + 1] (last channel: validity mask), "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        valid = x[..., -1] > 0.5
        feats = x[..., :-1]
    lengths = valid.sum(1).clamp(min=1)
    return feats, lengths


def length_mask(lengths: Tensor, steps: int) -> Tensor:
    """bool ``[N, T]``: True at the first ``lengths[i]`` steps of row i."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class SequencePool(nn.Module):
    """``[N, T, D]`` + lengths -> ``[N, D]``.

    ``last``: the output at the last valid step (for a bidirectional RNN the forward half at the
    last valid step and the backward half at step 0, i.e. both directions' final states);
    ``mean``: the mean over valid steps; ``attention``: a learned softmax-weighted sum over valid
    steps (``attn`` scores each step).
    """

    def __init__(self, mode: str, dim: int, backward_half: int = 0):
        super().__init__()
        self.mode = mode
        self.backward_half = backward_half
        self.attn = nn.Linear(dim, 1) if mode == "attention" else None

    def forward(self, seq: Tensor, lengths: Tensor) -> Tensor:
        n, steps, dim = seq.shape
        if self.mode == "last":
            rows = torch.arange(n, device=seq.device)
            last = seq[rows, lengths - 1]
            if not self.backward_half:
                return last
            split = dim - self.backward_half
            return torch.cat([last[:, :split], seq[:, 0, split:]], dim=1)
        mask = length_mask(lengths, steps)
        if self.mode == "mean":
            summed = (seq * mask.unsqueeze(-1).to(seq.dtype)).sum(1)
            return summed / lengths.unsqueeze(1).to(seq.dtype)
        assert self.attn is not None  # mode == "attention"
        scores = self.attn(seq).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.bmm(weights.unsqueeze(1), seq).squeeze(1)
