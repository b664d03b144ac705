from collections import Counter

import pytest

from talelab.config import TokenizerConfig
from talelab.tokenizer import train_tokenizer


def word_counts(tokenizer, texts):
    pre = tokenizer.backend.pre_tokenizer
    return Counter(word for text in texts for word, _ in pre.pre_tokenize_str(text))


@pytest.mark.slow
def test_word_level_keeps_the_most_frequent_words_plus_unk_and_endoftext(words, train_stories):
    assert words.vocab_size == 2048
    assert [words.backend.id_to_token(i) for i in (0, 1)] == ["<|endoftext|>", "<unk>"]
    assert (words.bos_id, words.eos_id, words.kind) == (0, 0, "words")
    counts = word_counts(words, train_stories)
    kept = set(words.backend.get_vocab()) - {"<|endoftext|>", "<unk>"}
    assert len(kept) == 2046 and kept <= set(counts)
    dropped = set(counts) - kept
    assert min(counts[w] for w in kept) >= max(counts[w] for w in dropped)  # ties at the boundary may go either way


def test_word_level_maps_unseen_words_to_unk_and_shows_them_as_unk(words):
    ids = words.encode("Lily saw a zyzzyva.")
    assert ids[3] == 1 and 1 not in ids[:3] + ids[4:]
    assert words.decode(ids) == "Lily saw a<unk>."


def test_word_level_decode_restores_sentences_of_known_words_with_their_spaces(words):
    text = 'Once upon a time, there was a little girl named Lily.\nShe said, "I want to play!"'
    assert words.decode(words.encode(text)) == text


@pytest.mark.slow
def test_word_level_lowercases_and_drops_words_below_min_frequency(train_stories):
    config = TokenizerConfig(kind="words", vocab_size=100_000, lowercase=True, min_frequency=5)
    tokenizer = train_tokenizer(iter(train_stories), config)
    counts = word_counts(tokenizer, [story.lower() for story in train_stories])
    assert tokenizer.vocab_size == 2 + sum(1 for n in counts.values() if n >= 5)
    assert tokenizer.encode("ONCE UPON a time") == tokenizer.encode("once upon a time")
    assert 1 not in tokenizer.encode("once upon a time")
