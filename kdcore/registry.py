"""A small generic name -> object registry used for models, losses, datasets and connectors."""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from kdcore.errors import KdflowError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factory functions).

    ``@REG.register("name")`` adds an entry; ``REG.get("name")`` returns it, and an unknown
    name raises a :class:`KdflowError` that lists every known name.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise KdflowError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KdflowError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
