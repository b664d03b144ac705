"""Train a word-level tokenizer: the most frequent words, everything else <unk>."""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from talelab.tokenizer.bpe import END_OF_TEXT

UNKNOWN = "<unk>"


def train_words(texts: Iterable[str], vocab_size: int, min_frequency: int, lowercase: bool) -> tokenizers.Tokenizer:
    """`<|endoftext|>` (id 0), `<unk>` (id 1) and the `vocab_size - 2` most frequent words."""
    backend = tokenizers.Tokenizer(models.WordLevel(unk_token=UNKNOWN))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    # Byte-level words carry their leading space ("Ġsaid"), so decode puts spaces and newlines back where they were.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[END_OF_TEXT, UNKNOWN], show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    return backend
