"""Model factories of the user's own code, named in a config as ``python:plugins_pkg.models:NAME``."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def make_net(in_channels: int, num_classes: int, width: int = 8) -> nn.Module:
    """A small CNN whose feature paths are ``body``, ``body.conv2``, ``head``."""
    body = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, width, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(width, 2 * width, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.AdaptiveAvgPool2d(1),
        )
    )
    return nn.Sequential(OrderedDict(body=body, flat=nn.Flatten(1), head=nn.Linear(2 * width, num_classes)))


def not_a_module(in_channels: int, num_classes: int):
    return [in_channels, num_classes]


def no_channels(num_classes: int) -> nn.Module:
    return nn.Linear(4, num_classes)


NOT_CALLABLE = 5


def broken(in_channels: int, num_classes: int) -> nn.Module:
    raise ValueError(f"this factory cannot build a net for {in_channels} channels")


class _Pair(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x), x


def returns_tuple(in_channels: int, num_classes: int) -> nn.Module:
    """A forward that returns (logits, input): not what kdflow can distil."""
    return _Pair(make_net(in_channels, num_classes))


def fixed_head(in_channels: int, num_classes: int) -> nn.Module:
    """A net that ignores num_classes and always has 10 outputs."""
    return make_net(in_channels, 10)
