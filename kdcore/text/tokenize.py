"""Tokenisers: ``word`` (words and punctuation marks) and ``char`` (one token per character).

Both are pure functions of the string, so the same text always gives the same tokens at training
and at inference time.
"""

from __future__ import annotations

import re
from typing import Callable

from kdcore.registry import Registry

TOKENIZERS: Registry[Callable[[str], list[str]]] = Registry("tokenizer")

_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


@TOKENIZERS.register("word")
def word_tokens(text: str) -> list[str]:
    """Runs of letters/digits (with an inner apostrophe: "it's", "don't") and single punctuation marks."""
    return _WORD.findall(text)


@TOKENIZERS.register("char")
def char_tokens(text: str) -> list[str]:
    """Every non-whitespace character (Chinese and other unsegmented scripts)."""
    return [c for c in text if not c.isspace()]


def tokenize(text: str, tokenizer: str = "word", lowercase: bool = True) -> list[str]:
    if lowercase:
        text = text.lower()
    return TOKENIZERS.get(tokenizer)(text)
