"""Run a text classifier on raw strings: encode with the model's vocabulary, predict in batches."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdcore.errors import KdflowError
from kdcore.predict_raw import encoded_logits
from kdcore.text.vocab import Vocabulary


def text_logits(model: nn.Module, vocab: Vocabulary, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Logits ``[N, C]`` (float32, CPU) of ``model`` for the raw strings ``texts``.

    Texts are encoded as the training data was (to the vocabulary's ``max_len`` ids), so ``model``
    may be a kdcore model or the registered one MLflow loads back (exported with that input shape).
    """
    if isinstance(texts, str):
        raise KdflowError("text_logits takes a list of strings, not a single string")
    return encoded_logits(model, vocab.encode, texts, len(vocab.class_names), batch_size)


def classify_texts(model: nn.Module, vocab: Vocabulary, texts: Sequence[str], batch_size: int = 256) -> list[str]:
    """The predicted class name of each string (class index as text when the vocabulary has no names)."""
    pred = text_logits(model, vocab, texts, batch_size).argmax(1).tolist()
    names = vocab.class_names
    return [names[p] if p < len(names) else str(p) for p in pred]
