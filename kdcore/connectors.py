"""Connectors: small trainable modules mapping a student feature to the teacher feature's shape.

Kinds: ``auto`` (identity when the shapes match, else 1x1 conv + BN for maps, Linear for vectors),
``none`` (identity; a shape mismatch is an error naming both shapes), ``conv`` and ``linear``
(always a learned projection). Register your own with ``@CONNECTORS.register("name")``.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from kdcore.errors import KdflowError
from kdcore.registry import Registry

Shape = Sequence[int]
ConnectorFactory = Callable[[tuple[int, ...], tuple[int, ...]], nn.Module]

CONNECTORS: Registry[ConnectorFactory] = Registry("connector")


class ConvConnector(nn.Module):
    """1x1 conv + BN to the teacher's channels, then resize to the teacher's (H, W)."""

    def __init__(self, in_channels: int, out_channels: int, size: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        h, w = x.shape[-2:]
        if (h, w) == self.size:
            return x
        if h >= self.size[0] and w >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


def _mismatch(student: tuple[int, ...], teacher: tuple[int, ...], why: str) -> KdflowError:
    return KdflowError(f"student feature shape {student} and teacher feature shape {teacher} differ: {why}")


@CONNECTORS.register("none")
def no_connector(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module:
    """Identity; the shapes must already be equal."""
    if student != teacher:
        raise _mismatch(student, teacher, "a connector is needed (use connector 'auto')")
    return nn.Identity()


@CONNECTORS.register("auto")
def auto_connector(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module:
    """Identity, a 1x1-conv connector for (C, H, W) maps, or a Linear on the last dim for vectors/sequences."""
    if student == teacher:
        return nn.Identity()
    if len(student) != len(teacher):
        raise _mismatch(student, teacher, "they have different numbers of dimensions")
    if len(student) == 3:
        return ConvConnector(student[0], teacher[0], (teacher[1], teacher[2]))
    if len(student) in (1, 2):
        if student[:-1] != teacher[:-1]:
            raise _mismatch(student, teacher, "only the last (feature) dimension can be mapped")
        return nn.Linear(student[-1], teacher[-1])
    raise _mismatch(student, teacher, "no connector for features with this many dimensions")


@CONNECTORS.register("conv")
def conv_connector(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module:
    """A learned 1x1 conv + BN to the teacher's channels (and size), even when the shapes already match."""
    if len(student) != 3 or len(teacher) != 3:
        raise _mismatch(student, teacher, "connector 'conv' needs feature maps (C, H, W) on both sides")
    return ConvConnector(student[0], teacher[0], (teacher[1], teacher[2]))


@CONNECTORS.register("linear")
def linear_connector(student: tuple[int, ...], teacher: tuple[int, ...]) -> nn.Module:
    """A learned Linear on the last (feature) dimension, even when the shapes already match."""
    if len(student) not in (1, 2) or len(student) != len(teacher) or student[:-1] != teacher[:-1]:
        raise _mismatch(student, teacher, "connector 'linear' needs vectors (D,) or sequences (L, D) of equal length")
    return nn.Linear(student[-1], teacher[-1])


def make_connector(student_shape: Shape, teacher_shape: Shape, kind: str = "auto") -> nn.Module:
    """A module mapping a student feature of per-sample shape ``student_shape`` to ``teacher_shape``."""
    factory = CONNECTORS.get(kind)
    return factory(tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape))


def check_connector_kind(loss: str, kind: str) -> str:
    """``kind`` if it names a registered connector, else a KdflowError listing the choices."""
    if kind not in CONNECTORS:
        raise KdflowError(
            f"loss {loss!r}: parameter 'connector' must be one of {', '.join(CONNECTORS.names())}, got {kind!r}"
        )
    return kind


def pair_connector(loss: str, pair: str, student_shape: Shape, teacher_shape: Shape, kind: str) -> nn.Module:
    """``make_connector`` whose errors name the loss and the layer pair (e.g. "student 'a' -> teacher 'b'")."""
    try:
        return make_connector(student_shape, teacher_shape, kind)
    except KdflowError as err:
        raise KdflowError(f"loss {loss!r}, pair {pair}: {err}") from None
