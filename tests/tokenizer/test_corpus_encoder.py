"""The corpus encoder: the ids of encode_batch, from each distinct piece of text encoded once."""

import re
import sys
import unicodedata

import pytest
from tokenizers import pre_tokenizers

from talelab.config import TokenizerConfig
from talelab.tokenizer import WHITESPACE, CorpusEncoder, train_tokenizer

PIECES = re.compile(f"[{WHITESPACE}]*[^{WHITESPACE}]+|[{WHITESPACE}]+")
AWKWARD = [
    "", " ", "  \n ", "Once upon a time.", "  two leading spaces", "trailing spaces  ", "tab\tand\ttabs",
    "a\n  b", "x\n\n\ny", "mixed \u3000\u3000 ideographic\u2003em\u00a0nbsp", "\x1c\x1d.\x1f,file separators",
    "numbers 123 4567.89 and 'quotes' it's we'll", "The end.<|endoftext|>Once", "a <|endoftext|> b",
    "emoji 🙂🙂 and accents café naïve", "\u200bzero\u200bwidth", "end with newline\n", "\r\nwindows\r\nlines",
]


@pytest.mark.parametrize("kind", ["bpe", "words", "gpt2", "llama2c"])
@pytest.mark.slow
def test_corpus_encoder_gives_the_ids_of_encode_batch_for_every_kind(tokenizers_by_kind, train_stories, kind):
    tokenizer = tokenizers_by_kind[kind]
    texts = train_stories[:300] + AWKWARD
    encoder = tokenizer.corpus_encoder()
    for bos, eos in ((True, False), (False, True)):
        assert encoder.encode_batch(texts, bos, eos) == tokenizer.encode_batch(texts, bos, eos)
        assert encoder.encode_batch(texts[::-1], bos, eos) == tokenizer.encode_batch(texts[::-1], bos, eos)
    # the byte-level kinds take the fast way, remembering pieces; llama2.c's, whose words span spaces, does not
    assert encoder.by_pieces == (kind != "llama2c")


def test_a_lowercasing_tokenizer_and_a_full_memory_still_give_the_ids_of_encode_batch(bpe, train_stories):
    lowercase = train_tokenizer(iter(train_stories[:200]), TokenizerConfig(kind="words", vocab_size=300,
                                                                           lowercase=True))
    texts = ["Once upon a TIME, ΣΟΦΟΣ said ΟΔΟΣ."] + train_stories[:50] + AWKWARD
    assert lowercase.corpus_encoder().encode_batch(texts, True) == lowercase.encode_batch(texts, True)
    small = CorpusEncoder(bpe, max_pieces=50)  # every batch has more distinct pieces: it forgets at each one
    for start in range(0, 200, 20):
        batch = train_stories[start:start + 20] + AWKWARD
        assert small.encode_batch(batch, True) == bpe.encode_batch(batch, True)
        assert small.known.keys() == {piece for text in batch for piece in PIECES.findall(text)}


def test_whitespace_is_what_the_byte_level_regex_calls_whitespace():
    """Two of a whitespace character before a comma make three words (c, c, ','); two of any other character make
    at most two. Every character that could be whitespace in either regex engine is checked."""
    split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ours = re.compile(f"[{WHITESPACE}]")
    candidates = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c < 0xE000 and (
        chr(c).isspace() or unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp", "Cc", "Cf"))]
    assert len(candidates) > 200
    for c in candidates:
        if c != " ":  # a space joins the comma after it (" ?[^\s\p{L}\p{N}]+")
            assert (len(split.pre_tokenize_str(c * 2 + ",")) == 3) == bool(ours.match(c)), hex(ord(c))
