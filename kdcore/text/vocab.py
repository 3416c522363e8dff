"""The vocabulary: token <-> id, built on the TRAIN split only and stored with the model.

Ids: ``PAD = 0`` (padding), ``UNK = 1`` (a token unseen in training); real tokens start at 2,
most frequent first (ties broken alphabetically, so the same texts give the same ids anywhere).
The JSON form holds everything needed to encode new text the way the training data was encoded:
tokeniser, lowercasing, maximum length, the tokens and the class names.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Optional, Sequence

import torch

from kdcore.errors import KdflowError
from kdcore.json_file import JsonFile
from kdcore.text.tokenize import TOKENIZERS, tokenize

PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")
FORMAT = "kdflow-vocab-v1"


@dataclass
class Vocabulary(JsonFile):
    what: ClassVar[str] = "vocabulary"
    tokens: list[str]
    tokenizer: str = "word"
    lowercase: bool = True
    max_len: int = 64
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        TOKENIZERS.get(self.tokenizer)  # fails listing the known tokenisers
        if list(self.tokens[:2]) != list(SPECIALS):
            raise KdflowError(f"a vocabulary must start with {SPECIALS}, got {self.tokens[:2]}")
        if isinstance(self.max_len, bool) or not isinstance(self.max_len, int) or self.max_len < 1:
            raise KdflowError(f"vocabulary max_len must be a positive integer, got {self.max_len!r}")
        self._index = {t: i for i, t in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            raise KdflowError("a vocabulary must not list a token twice")

    # ---- building ------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        tokenizer: str = "word",
        lowercase: bool = True,
        max_len: int = 64,
        min_freq: int = 1,
        max_size: Optional[int] = None,
        class_names: Sequence[str] = (),
    ) -> "Vocabulary":
        """Count tokens over ``texts`` (the train split) and keep those seen ``min_freq`` times or
        more, the ``max_size`` most frequent at most (specials included)."""
        TOKENIZERS.get(tokenizer)
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize(text, tokenizer, lowercase))
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *kept], tokenizer, lowercase, max_len, list(class_names))

    # ---- encoding ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text``, cut to ``max_len``; an empty text becomes ``[UNK]`` (never all padding)."""
        out = [self._index.get(t, UNK) for t in tokenize(text, self.tokenizer, self.lowercase)[: self.max_len]]
        return out or [UNK]

    def encode(self, texts: Sequence[str], length: Optional[int] = None) -> torch.Tensor:
        """int64 ``[N, T]`` padded with ``PAD``; T is ``length``, by default ``max_len`` (the length
        the training data was encoded to)."""
        rows = [self.ids(t) for t in texts]
        width = length if length is not None else self.max_len
        out = torch.full((len(rows), max(width, 1)), PAD, dtype=torch.int64)
        for i, r in enumerate(rows):
            r = r[:width]
            out[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
        return out

    def decode(self, ids: Sequence[int]) -> list[str]:
        return [self.tokens[i] for i in ids if i != PAD]

    # ---- storage -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "tokenizer": self.tokenizer,
            "lowercase": self.lowercase,
            "max_len": self.max_len,
            "class_names": list(self.class_names),
            "tokens": list(self.tokens),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vocabulary":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise KdflowError(f"not a kdflow vocabulary (expected format {FORMAT!r})")
        return cls(
            list(d["tokens"]), d["tokenizer"], bool(d["lowercase"]), int(d["max_len"]), list(d.get("class_names", []))
        )
