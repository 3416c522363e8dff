"""Initialise a student from a trained teacher of the same family by copying matching tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor, nn

from kdcore.errors import KdflowError

SELECT_RULES = ("first", "last", "spread")
# a rule for every shorter stage, or {student stage path: [teacher block index for each student block]}
Select = Union[str, dict[str, list[int]]]


@dataclass
class TransplantReport:
    """Which student tensors came from the teacher: whole (same shape) or as a leading slice."""

    copied: list[str] = field(default_factory=list)
    sliced: list[str] = field(default_factory=list)
    source: dict[str, str] = field(default_factory=dict)  # student tensor -> teacher tensor

    @property
    def all(self) -> list[str]:
        return self.copied + self.sliced


def _indexed_children(module: nn.Module) -> int | None:
    """Number of children if ``module`` is a Sequential/ModuleList indexed 0..n-1, else None."""
    if not isinstance(module, (nn.Sequential, nn.ModuleList)):
        return None
    names = [name for name, _ in module.named_children()]
    return len(names) if names == [str(i) for i in range(len(names))] else None


def _check_select(select: Select) -> None:
    if isinstance(select, dict):
        for stage, blocks in select.items():
            if (
                not isinstance(stage, str)
                or not isinstance(blocks, (list, tuple))
                or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks)
            ):
                raise KdflowError(
                    f"init_from_teacher: select maps a stage path to a list of teacher block indices, "
                    f"like {{'layer1': [0], 'layer2': [0]}}; got {stage!r}: {blocks!r}"
                )
    elif select not in SELECT_RULES:
        raise KdflowError(
            f"init_from_teacher: unknown select {select!r}; choose one of {', '.join(SELECT_RULES)} "
            "or a mapping {stage path: [teacher block indices]}"
        )


def _pick(i: int, n: int, m: int, select: Select, stage: str = "") -> int:
    """Teacher index for student block ``i`` when a student stage of ``n`` blocks meets ``m`` teacher blocks."""
    if isinstance(select, dict):
        if stage not in select:
            return i  # stages not listed take the first blocks
        blocks = list(select[stage])
        if len(blocks) != n or any(b >= m for b in blocks):
            raise KdflowError(
                f"init_from_teacher: select[{stage!r}] = {blocks} must give one teacher block index "
                f"(0..{m - 1}) for each of the student's {n} blocks in that stage"
            )
        return blocks[i]
    if select == "first":
        return i
    if select == "last":
        return m - n + i
    return 0 if n == 1 else round(i * (m - 1) / (n - 1))


def _module_map(student: nn.Module, teacher: nn.Module, select: Select) -> dict[str, str]:
    """Student module path -> teacher module path, remapping block indices of shorter stages."""
    teacher_modules = dict(teacher.named_modules())
    mapping = {"": ""}
    used: set[str] = set()
    for path, module in student.named_modules():
        if path not in mapping:
            continue  # parent had no teacher counterpart
        t_path = mapping[path]
        t_module = teacher_modules.get(t_path)
        n = _indexed_children(module)
        m = _indexed_children(t_module) if t_module is not None else None
        for name, _ in module.named_children():
            t_name = name
            if n is not None and m is not None and (n < m or (isinstance(select, dict) and path in select)):
                t_name = str(_pick(int(name), n, m, select, path))
                used.add(path)
            child = f"{path}.{name}" if path else name
            t_child = f"{t_path}.{t_name}" if t_path else t_name
            if t_child in teacher_modules:
                mapping[child] = t_child
    if isinstance(select, dict) and set(select) - used:
        stages = [p for p, mod in student.named_modules() if _indexed_children(mod)]
        raise KdflowError(
            f"init_from_teacher: select names stage(s) {sorted(set(select) - used)} that the student "
            f"does not have (or the teacher has no counterpart of); student stages: {', '.join(stages)}"
        )
    return mapping


def _under(key: str, prefix: str) -> str | None:
    """The part of ``key`` below module ``prefix`` ('' for the prefix itself), or None if outside it."""
    if not prefix:
        return key
    if key == prefix:
        return ""
    return key[len(prefix) + 1 :] if key.startswith(prefix + ".") else None


def _join(prefix: str, rest: str) -> str:
    return ".".join(part for part in (prefix, rest) if part)


def _fits_inside(small: torch.Size, big: torch.Size) -> bool:
    """``small`` is a leading slice of ``big``: same rank, no dimension larger."""
    return len(small) == len(big) and all(a <= b for a, b in zip(small, big))


def _auto_pairs(student: nn.Module, teacher: nn.Module, select: Select, partial: bool) -> list[tuple[str, str]]:
    modules = _module_map(student, teacher, select)
    t_state = teacher.state_dict()
    pairs = []
    for key, tensor in student.state_dict().items():
        module_path, _, leaf = key.rpartition(".")
        if module_path not in modules:
            continue
        t_key = _join(modules[module_path], leaf)
        if t_key in t_state and (
            t_state[t_key].shape == tensor.shape or (partial and _fits_inside(tensor.shape, t_state[t_key].shape))
        ):
            pairs.append((key, t_key))
    return pairs


def _explicit_pairs(
    student: nn.Module, teacher: nn.Module, mapping: dict[str, str], partial: bool = False
) -> list[tuple[str, str]]:
    s_modules, t_modules = dict(student.named_modules()), dict(teacher.named_modules())
    s_state, t_state = student.state_dict(), teacher.state_dict()
    pairs = []
    for s_prefix, t_prefix in mapping.items():
        if s_prefix not in s_modules:
            raise KdflowError(f"init_from_teacher: student has no module {s_prefix!r}")
        if t_prefix not in t_modules:
            raise KdflowError(f"init_from_teacher: teacher has no module {t_prefix!r}")
        for key, tensor in s_state.items():
            rest = _under(key, s_prefix)
            if rest is None:
                continue
            t_key = _join(t_prefix, rest)
            if t_key not in t_state:
                raise KdflowError(f"init_from_teacher: student {key!r} has no teacher counterpart {t_key!r}")
            if t_state[t_key].shape != tensor.shape and not (
                partial and _fits_inside(tensor.shape, t_state[t_key].shape)
            ):
                raise KdflowError(
                    f"init_from_teacher: shape mismatch between student {key!r} {tuple(tensor.shape)} "
                    f"and teacher {t_key!r} {tuple(t_state[t_key].shape)}"
                )
            pairs.append((key, t_key))
    return pairs


def transplant(
    student: nn.Module,
    teacher: nn.Module,
    mapping: dict[str, str] | None = None,
    select: Select = "first",
    partial: bool = False,
) -> TransplantReport:
    """Copy teacher weights into ``student``; report which tensors were copied whole or sliced.

    ``mapping=None`` copies every student parameter/buffer whose (index-remapped) name exists in
    the teacher with the same shape; shorter student stages pick teacher blocks by ``select``:
    "first", "last", "spread", or ``{stage path: [teacher block index per student block]}``
    (e.g. ``{"layer3": [0, 4]}``; unlisted stages take the first blocks). An explicit mapping
    copies student module prefix <- teacher module prefix and fails on any shape mismatch.
    With ``partial``, a student tensor smaller than its teacher counterpart in some dimensions
    (a narrower layer) receives the leading slice ``teacher[:d0, :d1, ...]`` instead.
    """
    _check_select(select)
    if mapping is None:
        pairs = _auto_pairs(student, teacher, select, partial)
    else:
        pairs = _explicit_pairs(student, teacher, mapping, partial)
    if not pairs:
        raise KdflowError("init_from_teacher: no tensor could be copied (no student tensor matches the teacher)")
    chosen = dict(pairs)  # a later mapping entry wins over an earlier overlapping one
    s_state, t_state = student.state_dict(), teacher.state_dict()
    report = TransplantReport(source=chosen)
    with torch.no_grad():
        for key, t_key in chosen.items():
            target: Tensor = s_state[key]
            src = t_state[t_key]
            if src.shape == target.shape:
                target.copy_(src)
                report.copied.append(key)
            else:
                target.copy_(src[tuple(slice(0, d) for d in target.shape)])
                report.sliced.append(key)
    return report


def init_from_teacher(
    student: nn.Module,
    teacher: nn.Module,
    mapping: dict[str, str] | None = None,
    select: Select = "first",
    partial: bool = False,
) -> list[str]:
    """Copy teacher weights into ``student`` (see :func:`transplant`); return the names of the student
    tensors copied (whole or sliced)."""
    return transplant(student, teacher, mapping=mapping, select=select, partial=partial).all
