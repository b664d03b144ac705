"""Train a byte-level BPE: every text round-trips exactly, no <unk> is ever needed."""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> tokenizers.Tokenizer:
    """A GPT-2-style byte-level BPE with `<|endoftext|>` as id 0 and `vocab_size` tokens in all."""
    backend = tokenizers.Tokenizer(models.BPE())
    # No normalizer: even NFC would change decomposed characters, and decode(encode(text)) must give text back.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even those the corpus lacks
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return backend
