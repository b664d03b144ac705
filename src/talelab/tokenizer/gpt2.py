"""The GPT-2 byte-level BPE from its original vocab.json + merges.txt."""

from __future__ import annotations

from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from talelab.errors import InputError
from talelab.tokenizer.bpe import END_OF_TEXT


def load_gpt2(directory: Path) -> tokenizers.Tokenizer:
    """GPT-2's tokenizer as Hugging Face builds it; `<|endoftext|>` (50256) is its only special token."""
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    try:
        # from_file skips a '#version' first line of merges.txt, as GPT-2's own files have.
        model = models.BPE.from_file(str(vocab), str(merges))
    except Exception as e:  # tokenizers raises a plain Exception for unreadable or malformed files
        raise InputError(f"{directory}: cannot read GPT-2 vocab.json + merges.txt ({e})") from None
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    if backend.token_to_id(END_OF_TEXT) is None:
        raise InputError(f"{vocab}: no '{END_OF_TEXT}' token; not a GPT-2 vocabulary")
    backend.add_special_tokens([AddedToken(END_OF_TEXT, special=True)])
    return backend
