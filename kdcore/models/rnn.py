"""Recurrent sequence classifiers: ``text_rnn`` (token embedding) and ``speech_rnn`` (frame projection).

    embed -> rnn (GRU or LSTM layers; hidden size; bidirectional) -> pool -> dropout -> head

The recurrence runs on the padded batch with masks instead of packed sequences, so the models also
trace and export (``torch.export``, which MLflow uses to store them): the forward direction at a
valid step only sees earlier valid steps, and the backward direction reads each sequence reversed
within its own length, so padding never reaches a valid step. Padding steps of every layer's output
are set to zero.

Module paths for hints: ``embed`` [N, T, E]; ``rnn`` [N, T, H * directions] (the output sequence
of the last layer); ``rnn.K`` (layer K's output sequence); ``pool`` [N, H * directions] (with
``pooling: last``, the final states of both directions). Layer K's weights live in ``rnn.K.fwd``
(and ``rnn.K.bwd``), so ``pretrain.method: teacher_layers`` gives a 1-layer student a layer of a
2-layer teacher with the same sizes (``pretrain.select``: first, last or spread).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdcore.models.registry import MODELS
from kdcore.models.sequence import (
    INPUTS,
    POOLINGS,
    SequencePool,
    check_bool,
    check_choice,
    check_dropout,
    check_int,
    front_end,
    length_mask,
    read_input,
)

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


def reverse_within(x: Tensor, lengths: Tensor) -> Tensor:
    """Each row's first ``lengths[i]`` steps in reverse order, the padding steps left in place."""
    steps = x.shape[1]
    t = torch.arange(steps, device=x.device).unsqueeze(0)
    idx = torch.where(t < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - t, t)
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class RecurrentLayer(nn.Module):
    """One recurrent layer: ``fwd`` reads each sequence forwards, ``bwd`` (bidirectional) backwards."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, bidirectional: bool):
        super().__init__()
        self.fwd = CELLS[cell](input_size, hidden_size, batch_first=True)
        self.bwd = CELLS[cell](input_size, hidden_size, batch_first=True) if bidirectional else None

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        out = self.fwd(x)[0]
        if self.bwd is not None:
            back = reverse_within(self.bwd(reverse_within(x, lengths))[0], lengths)
            out = torch.cat([out, back], dim=-1)
        return out * length_mask(lengths, x.shape[1]).unsqueeze(-1).to(out.dtype)


class RecurrentStack(nn.ModuleList):
    """Layers ``0..K-1`` (a ModuleList, so teacher-layer initialisation can pick among them), with
    dropout between layers."""

    def __init__(self, layers: list[RecurrentLayer], dropout: float):
        super().__init__(layers)
        self.dropout = dropout  # a plain number: every child of a ModuleList must be a layer

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        for i, layer in enumerate(self):
            if i and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            x = layer(x, lengths)
        return x


class RNNClassifier(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        inputs: str,
        cell: str = "gru",
        embed_dim: int = 64,
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        pooling: str = "last",
        dropout: float = 0.0,
        arch: str = "rnn",
    ):
        super().__init__()
        self.inputs = check_choice(arch, "inputs", inputs, INPUTS)
        check_choice(arch, "cell", cell, tuple(CELLS))
        check_choice(arch, "pooling", pooling, POOLINGS)
        for name, value in (("embed_dim", embed_dim), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_int(arch, name, value)
        check_bool(arch, "bidirectional", bidirectional)
        dropout = check_dropout(arch, dropout)
        self.arch = arch
        directions = 2 if bidirectional else 1
        self.embed = front_end(self.inputs, in_channels, embed_dim)
        self.rnn = RecurrentStack(
            [
                RecurrentLayer(cell, embed_dim if i == 0 else hidden_size * directions, hidden_size, bidirectional)
                for i in range(num_layers)
            ],
            dropout,
        )
        out_dim = hidden_size * directions
        self.pool = SequencePool(pooling, out_dim, backward_half=hidden_size if bidirectional else 0)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(out_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        feats, lengths = read_input(x, self.inputs, self.arch)
        seq = self.rnn(self.embed(feats), lengths)
        return self.head(self.dropout(self.pool(seq, lengths)))


def _factory(arch: str, inputs: str, what: str):
    def factory(
        in_channels: int,
        num_classes: int,
        cell: str = "gru",
        embed_dim: int = 64,
        hidden_size: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        pooling: str = "last",
        dropout: float = 0.0,
    ) -> RNNClassifier:
        return RNNClassifier(
            in_channels,
            num_classes,
            inputs=inputs,
            cell=cell,
            embed_dim=embed_dim,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            pooling=pooling,
            dropout=dropout,
            arch=arch,
        )

    factory.__name__ = arch
    factory.__doc__ = f"{what} -> GRU/LSTM layers -> pool (last, mean, attention) -> linear."
    MODELS.register(arch)(factory)


_factory("text_rnn", "tokens", "Token ids [N, T] (``in_channels`` = vocabulary size) -> embedding")
_factory("speech_rnn", "frames", "Frames [N, T, F + 1] (``in_channels`` = F) -> linear frame projection")
