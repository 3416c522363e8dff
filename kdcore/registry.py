"""A small generic name -> object registry used for models, losses, datasets and connectors."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from kdcore.errors import KdflowError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factory functions).

    ``@REG.register("name")`` adds an entry; ``REG.get("name")`` returns it, and an unknown
    name raises a :class:`KdflowError` that lists every known name. The first lookup of a name
    that is not registered loads the ``kdflow.plugins`` entry points (:mod:`kdcore.plugins`).
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
        if name not in self:
            known = ", ".join(sorted(self._items)) or "(none)"
            from kdcore.plugins import entry_point_errors

            broken = "".join(f"; plugin {ep!r} did not load ({why})" for ep, why in entry_point_errors.items())
            raise KdflowError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}{broken}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items and isinstance(name, str):
            from kdcore.plugins import load_entry_points  # installed plugins register on the first miss

            load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
