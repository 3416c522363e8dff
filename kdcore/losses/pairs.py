"""Layer pairs named by module path (``{"student": PATH, "teacher": PATH}``), shared by the feature losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from torch import Tensor

from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.losses.registry import Shapes

EXAMPLE = '[{"student": "block2", "teacher": "layer3"}]'


@dataclass(frozen=True)
class Pair:
    """One student module path matched with one teacher module path (and, optionally, its connector)."""

    student: str
    teacher: str
    connector: Optional[str] = None

    def __str__(self) -> str:
        return f"student {self.student!r} -> teacher {self.teacher!r}"


def parse_pairs(loss: str, pairs: Any, *, allow_connector: bool = False) -> list[Pair]:
    """Validate a ``pairs`` parameter; the error names the loss, the bad entry and the expected form."""
    keys = "'student' and 'teacher'" + (" (and optionally 'connector')" if allow_connector else "")
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise KdflowError(f"loss {loss!r}: parameter 'pairs' must be a non-empty list like {EXAMPLE}, got {pairs!r}")
    checked = []
    for pair in pairs:
        allowed = {"student", "teacher", "connector"} if allow_connector else {"student", "teacher"}
        ok = isinstance(pair, Mapping) and {"student", "teacher"} <= set(pair) <= allowed
        if ok:
            ok = all(isinstance(pair[k], str) and pair[k] for k in ("student", "teacher"))
            ok = ok and (pair.get("connector") is None or isinstance(pair.get("connector"), str))
        if not ok:
            raise KdflowError(
                f"loss {loss!r}: each entry of 'pairs' needs the keys {keys} (module paths), like {EXAMPLE}; "
                f"got {pair!r}"
            )
        checked.append(Pair(pair["student"], pair["teacher"], pair.get("connector")))
    return checked


def student_paths(pairs: list[Pair]) -> list[str]:
    return list(dict.fromkeys(p.student for p in pairs))


def teacher_paths(pairs: list[Pair]) -> list[str]:
    return list(dict.fromkeys(p.teacher for p in pairs))


def pair_shapes(loss: str, pair: Pair, student_shapes: Shapes, teacher_shapes: Shapes) -> tuple[tuple, tuple]:
    """The per-sample shapes of both sides of ``pair``, or an error naming the pair."""
    if pair.student not in student_shapes or pair.teacher not in teacher_shapes:
        raise KdflowError(f"loss {loss!r}: no feature shape known for pair {pair}")
    return tuple(student_shapes[pair.student]), tuple(teacher_shapes[pair.teacher])


def pair_features(loss: str, pair: Pair, inp: KDInputs) -> tuple[Tensor, Tensor]:
    """(student feature, detached teacher feature) of ``pair`` from the batch."""
    if pair.student not in inp.student_features or pair.teacher not in inp.teacher_features:
        raise KdflowError(f"loss {loss!r}: features for pair {pair} are missing from the batch")
    s = inp.student_features[pair.student]
    return s, inp.teacher_features[pair.teacher].detach().to(s.dtype)


def require_rank(loss: str, pair: Pair, s_shape: tuple, t_shape: tuple, ranks: tuple[int, ...], what: str) -> None:
    """Fail early when a side of ``pair`` is not of a per-sample rank in ``ranks``."""
    if len(s_shape) not in ranks or len(t_shape) not in ranks:
        raise KdflowError(
            f"loss {loss!r}, pair {pair}: needs {what}; got student shape {s_shape} and teacher shape {t_shape}"
        )
