"""A small transformer encoder classifier: ``text_transformer`` and ``speech_transformer``.

    embed (+ learned positions) -> encoder (pre-norm TransformerEncoder, key padding mask) -> pool -> head

An alternative teacher to the RNNs. Padding steps are masked out of attention and pooling, so
they never change a prediction. Module paths for hints: ``embed``, ``encoder`` [N, T, d_model]
(padding steps hold no meaning: prefer ``pool``), ``encoder.layers.K``, ``pool`` [N, d_model].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdcore.errors import KdflowError
from kdcore.models.registry import MODELS
from kdcore.models.sequence import (
    INPUTS,
    SequencePool,
    check_choice,
    check_dropout,
    check_int,
    front_end,
    length_mask,
    read_input,
)

POOLINGS = ("mean", "attention")  # "last" means little without recurrence


class TransformerClassifier(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        inputs: str,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        pooling: str = "mean",
        dropout: float = 0.1,
        max_len: int = 512,
        arch: str = "transformer",
    ):
        super().__init__()
        self.inputs = check_choice(arch, "inputs", inputs, INPUTS)
        check_choice(arch, "pooling", pooling, POOLINGS)
        for name, value in (
            ("d_model", d_model),
            ("nhead", nhead),
            ("num_layers", num_layers),
            ("dim_feedforward", dim_feedforward),
            ("max_len", max_len),
        ):
            check_int(arch, name, value)
        if d_model % nhead:
            raise KdflowError(f"model {arch!r}: d_model ({d_model}) must be divisible by nhead ({nhead})")
        dropout = check_dropout(arch, dropout)
        self.arch, self.max_len = arch, max_len
        self.embed = front_end(self.inputs, in_channels, d_model)
        self.position = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.pool = SequencePool(pooling, d_model)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        feats, lengths = read_input(x, self.inputs, self.arch)
        steps = x.shape[1]
        if steps > self.max_len:
            raise KdflowError(f"model {self.arch!r}: input has {steps} steps, more than max_len {self.max_len}")
        positions = torch.arange(steps, device=x.device)
        h = self.embed(feats) + self.position(positions).unsqueeze(0)
        h = self.encoder(h, src_key_padding_mask=~length_mask(lengths, steps))
        return self.head(self.dropout(self.pool(h, lengths)))


def _make(arch: str, inputs: str):
    def factory(
        in_channels: int,
        num_classes: int,
        d_model: int = 64,
        nhead: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 128,
        pooling: str = "mean",
        dropout: float = 0.1,
        max_len: int = 512,
    ) -> TransformerClassifier:
        return TransformerClassifier(
            in_channels,
            num_classes,
            inputs=inputs,
            d_model=d_model,
            nhead=nhead,
            num_layers=num_layers,
            dim_feedforward=dim_feedforward,
            pooling=pooling,
            dropout=dropout,
            max_len=max_len,
            arch=arch,
        )

    factory.__name__ = arch
    factory.__doc__ = (
        f"Transformer encoder classifier over {'token ids [N, T]' if inputs == 'tokens' else 'frames [N, T, F + 1]'}"
        f" (``in_channels`` = {'vocabulary size' if inputs == 'tokens' else 'F'})."
    )
    MODELS.register(arch)(factory)


_make("text_transformer", "tokens")
_make("speech_transformer", "frames")
