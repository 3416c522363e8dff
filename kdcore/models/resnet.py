"""CIFAR-style ResNets (basic blocks, three stages): ``resnet`` and the usual presets."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from kdcore.errors import KdflowError
from kdcore.models.registry import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 convs plus a shortcut (1x1 conv + BN when the shape changes); ``relu`` is the block output."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv, ``layer1..layer3`` of ``(depth - 2) / 6`` basic blocks each, global pool, linear head."""

    def __init__(self, in_channels: int, num_classes: int, depth: int, widths: list[int]):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise KdflowError(f"model 'resnet': depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth!r}")
        if (
            not isinstance(widths, (list, tuple))
            or len(widths) != 4
            or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)
        ):
            raise KdflowError(
                f"model 'resnet': widths must be 4 positive integers [stem, stage1, stage2, stage3], got {widths!r}"
            )
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


@MODELS.register("resnet")
def resnet(in_channels: int, num_classes: int, depth: int, widths: list[int]) -> ResNet:
    """Generic CIFAR ResNet of ``depth`` = 6n+2 with ``widths`` = [stem, stage1, stage2, stage3]."""
    return ResNet(in_channels, num_classes, depth, list(widths) if isinstance(widths, tuple) else widths)


def _preset(name: str, depth: int, widths: list[int]) -> None:
    def factory(in_channels: int, num_classes: int) -> ResNet:
        return ResNet(in_channels, num_classes, depth, list(widths))

    factory.__name__ = name
    factory.__doc__ = f"CIFAR ResNet-{depth} with widths {widths}."
    MODELS.register(name)(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _preset(f"resnet{_depth}", _depth, [16, 16, 32, 64])
_preset("resnet8x4", 8, [32, 64, 128, 256])
_preset("resnet32x4", 32, [32, 64, 128, 256])
