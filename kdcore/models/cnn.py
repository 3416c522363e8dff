"""A plain conv-BN-ReLU-pool CNN (``cnn``) and its size presets ``cnn_tiny`` ... ``cnn_large``."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from kdcore.errors import KdflowError
from kdcore.models.registry import MODELS


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 -> BN -> ReLU -> 2x2 max-pool (ceil mode, so a 1x1 map stays 1x1)."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(2, ceil_mode=True),
        )
    )


class CNN(nn.Module):
    """Blocks ``block1..blockN`` (one per entry of ``channels``), global average pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, channels: list[int], dropout: float = 0.0):
        super().__init__()
        if (
            not isinstance(channels, (list, tuple))
            or not channels
            or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
        ):
            raise KdflowError(f"model 'cnn': channels must be a non-empty list of positive integers, got {channels!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise KdflowError(f"model 'cnn': dropout must be a number in [0, 1), got {dropout!r}")
        prev = in_channels
        for i, width in enumerate(channels, start=1):
            self.add_module(f"block{i}", conv_block(prev, width))
            prev = width
        self.num_blocks = len(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.num_blocks + 1):
            x = getattr(self, f"block{i}")(x)
        x = self.flatten(self.pool(x))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc(x)


@MODELS.register("cnn")
def cnn(in_channels: int, num_classes: int, channels: list[int], dropout: float = 0.0) -> CNN:
    """Generic CNN: one conv block per entry of ``channels``."""
    return CNN(in_channels, num_classes, list(channels) if isinstance(channels, tuple) else channels, dropout)


def _preset(name: str, channels: list[int]) -> None:
    def factory(in_channels: int, num_classes: int, dropout: float = 0.0) -> CNN:
        return CNN(in_channels, num_classes, list(channels), dropout)

    factory.__name__ = name
    factory.__doc__ = f"CNN preset with channels {channels}."
    MODELS.register(name)(factory)


_preset("cnn_tiny", [8, 16])
_preset("cnn_small", [16, 32, 64])
_preset("cnn_medium", [32, 64, 128])
_preset("cnn_large", [64, 128, 256])
