"""Checking the keyword arguments a config passes to a registered callable against its signature.

Models and losses are built from config mappings (``student.kwargs``, ``distill.losses.kd``); one
helper checks, before the call, that every given name is a parameter of the callable and that
every parameter without a default is given, so a typo fails naming the parameter and the accepted
ones instead of surfacing as a ``TypeError`` deep inside.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterable, Mapping

from kdcore.errors import KdflowError

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    target = fn.__init__ if inspect.isclass(fn) else fn  # a class: its constructor, without self
    params = list(inspect.signature(target).parameters.values())
    return params[1:] if inspect.isclass(fn) else params


def accepted_params(fn: Callable[..., Any], skip: Iterable[str] = ()) -> list[str]:
    """Names of the keyword parameters ``fn`` takes, those in ``skip`` left out."""
    skipped = set(skip)
    return [p.name for p in _parameters(fn) if p.kind in _NAMED and p.name not in skipped]


def takes_any_kwargs(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` has a ``**kwargs`` parameter (then unknown names cannot be checked here)."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in _parameters(fn))


def check_kwargs(
    what: str, fn: Callable[..., Any], kwargs: Mapping[str, Any], skip: Iterable[str] = (), also: Iterable[str] = ()
) -> None:
    """Raise a KdflowError naming ``what`` (e.g. ``model 'cnn'``) when ``kwargs`` has a name ``fn``
    does not take or lacks one it needs; the message lists the accepted parameters (with ``also``,
    the names the caller takes itself, e.g. a loss's ``weight``) and the closest one to a typo."""
    skipped = set(skip)
    accepted = accepted_params(fn, skipped)
    listed = ", ".join([*accepted, *also]) or "(none)"
    if not takes_any_kwargs(fn):
        for name in kwargs:
            if name not in accepted:
                close = difflib.get_close_matches(name, [*accepted, *also], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise KdflowError(f"{what} does not accept parameter {name!r}{hint}; accepted parameters: {listed}")
    for p in _parameters(fn):
        if p.kind in _NAMED and p.name not in skipped and p.default is inspect.Parameter.empty and p.name not in kwargs:
            raise KdflowError(f"{what} needs parameter {p.name!r}; accepted parameters: {listed}")
