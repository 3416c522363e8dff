"""Text input for sequence models: tokenisers, the vocabulary built on the train split, and
``classify_texts`` to run a trained (or registered) model on raw strings."""

from kdcore.text.classify import classify_texts, text_logits
from kdcore.text.tokenize import TOKENIZERS, tokenize
from kdcore.text.vocab import PAD, UNK, Vocabulary

__all__ = ["PAD", "TOKENIZERS", "UNK", "Vocabulary", "classify_texts", "text_logits", "tokenize"]
