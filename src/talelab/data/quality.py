"""A transparent quality score for children's stories in [0, 1], in the spirit of seed 000's: prepare's
--min-quality drops documents by it, and `talelab eval`'s quality section (evaluate/quality.py) reports it.

Every component is a number in [0, 1] that a person can recompute by hand; the score is their weighted mean.
Words are runs of letters and digits, with an apostrophe inside (don't); sentences come from split_sentences.

| component | weight | 1 means | how it is computed |
|---|---:|---|---|
| vocabulary | 2 | varied words | distinct words / words, over the first 200 words, divided by 0.5 and capped at 1 |
| sentence_variety | 1 | sentences start differently | distinct sentence openings (first two words) / sentences |
| dialogue | 1 | direct speech | 1 if a quoted span holds a word (data.tags.has_dialogue), else 0 |
| length | 2 | 80 to 400 words | words / 80 below 80; from 400 falls linearly to 0 at 800 words |
| repetition | 2 | nothing repeated | distinct word 3-grams / word 3-grams |
| long_words | 1 | no junk words | 1 - (share of words over 15 characters) / 0.05, floored at 0 |
| special_characters | 1 | plain prose | 1 - (share of other characters) / 0.02, floored at 0 |

The thresholds fit TinyStories: its stories are 100-300 words, about half of their first 200 words are distinct,
and they use no markup. "Other characters" are all but letters, digits, whitespace and story punctuation
(. , ! ? ; : ' " - ( ) and curly quotes, dashes, ellipsis). A text without words scores 0 on every component.
"""

from __future__ import annotations

import re

from talelab.data.sentences import split_sentences
from talelab.data.tags import has_dialogue

WEIGHTS = {"vocabulary": 2, "sentence_variety": 1, "dialogue": 1, "length": 2, "repetition": 2, "long_words": 1,
           "special_characters": 1}
VOCABULARY_WINDOW, VOCABULARY_TARGET = 200, 0.5
MIN_WORDS, MAX_WORDS, ZERO_AT_WORDS = 80, 400, 800
LONG_WORD, LONG_WORD_LIMIT = 15, 0.05
SPECIAL_LIMIT = 0.02
STORY_PUNCTUATION = set(".,!?;:'\"-()‘’“”…–—")
WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def length_component(n_words: int) -> float:
    if n_words < MIN_WORDS:
        return n_words / MIN_WORDS
    return max(0.0, min(1.0, (ZERO_AT_WORDS - n_words) / (ZERO_AT_WORDS - MAX_WORDS)))


def quality_components(text: str) -> dict[str, float]:
    """Each component of the quality score, in [0, 1] (see the table in this module's docstring)."""
    words = words_of(text)
    if not words:
        return dict.fromkeys(WEIGHTS, 0.0)
    window = words[:VOCABULARY_WINDOW]
    openings = [tuple(words_of(s)[:2]) for s in split_sentences(text)]
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    long_share = sum(len(w) > LONG_WORD for w in words) / len(words)
    special = sum(not (c.isalnum() or c.isspace() or c in STORY_PUNCTUATION) for c in text) / len(text)
    return {
        "vocabulary": min(1.0, len(set(window)) / len(window) / VOCABULARY_TARGET),
        "sentence_variety": len(set(openings)) / len(openings) if openings else 0.0,
        "dialogue": 1.0 if has_dialogue(text) else 0.0,
        "length": length_component(len(words)),
        "repetition": len(set(trigrams)) / len(trigrams) if trigrams else 1.0,
        "long_words": max(0.0, 1 - long_share / LONG_WORD_LIMIT),
        "special_characters": max(0.0, 1 - special / SPECIAL_LIMIT),
    }


def weighted_score(components: dict[str, float]) -> float:
    return sum(WEIGHTS[name] * value for name, value in components.items()) / sum(WEIGHTS.values())


def quality_score(text: str) -> float:
    """The weighted mean of the components: 0 (junk) to 1 (a varied story of good length with dialogue)."""
    return weighted_score(quality_components(text))


def quality_too_low(text: str, min_quality: float) -> str | None:
    """A prepare drop rule: why the document goes (its score is below min_quality), or None to keep it."""
    score = quality_score(text)
    return f"quality {score:.3f} < {min_quality}" if score < min_quality else None
