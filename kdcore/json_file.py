"""What a model needs beside its weights to read raw inputs (a text vocabulary, a speech frame spec,
an image spec) is a small JSON document: the shared half of those classes (storage and hashing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from kdcore.errors import KdflowError

T = TypeVar("T", bound="JsonFile")


class JsonFile:
    """A subclass gives ``what`` (its name in messages), ``to_dict`` and ``from_dict`` (which raises
    KdflowError, KeyError, TypeError or ValueError on a document it does not take)."""

    what: ClassVar[str] = "document"

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise KdflowError(f"{cls.what} file {path} does not exist") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise KdflowError(f"{cls.what} file {path} is not a valid kdflow {cls.what} ({exc})") from None
