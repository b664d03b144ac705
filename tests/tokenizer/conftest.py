"""Tokenizers built once per session from the real shared data."""

import os
import re

import pytest

# transformers must not try the hub (a hung call costs ~30 s before failing).
for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(name, "1")

from talelab.config import TokenizerConfig  # noqa: E402
from talelab.paths import shared_file  # noqa: E402
from talelab.tokenizer import load_tokenizer, train_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def train_stories() -> list[str]:
    """The stories of train-head.txt (separated by <|endoftext|> lines)."""
    text = shared_file("data/tinystories/train-head.txt").read_text(encoding="utf-8")
    return [story.strip() for story in text.split("<|endoftext|>") if story.strip()]


@pytest.fixture(scope="session")
def reference_pieces() -> list[str]:
    """The 300 pieces of the reference protocol (shared/README.md): valid-head.txt split on blank lines."""
    text = shared_file("data/tinystories/valid-head.txt").read_text(encoding="utf-8")
    pieces = [piece.strip() for piece in re.split(r"\n\s*\n", text)]
    return [piece for piece in pieces if piece][1:301]


@pytest.fixture(scope="session")
def bpe(train_stories):
    return train_tokenizer(iter(train_stories), TokenizerConfig(kind="bpe", vocab_size=2048))


@pytest.fixture(scope="session")
def words(train_stories):
    return train_tokenizer(iter(train_stories), TokenizerConfig(kind="words", vocab_size=2048, min_frequency=2))


@pytest.fixture(scope="session")
def gpt2():
    return load_tokenizer(shared_file("tokenizers/gpt2/vocab.json").parent)


@pytest.fixture(scope="session")
def llama2c():
    return load_tokenizer(shared_file("models/stories260K/tok512.bin"))


@pytest.fixture(scope="session")
def tokenizers_by_kind(bpe, words, gpt2, llama2c):
    return {"bpe": bpe, "words": words, "gpt2": gpt2, "llama2c": llama2c}
