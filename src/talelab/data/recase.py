"""Restore the capitals of lowercased text from word casing learned on cased text of the same kind.

TinyStories' publisher ships a 4 MB lowercased copy of its train split (`train-head-lowercase.txt`) beside the cased
2 MiB head: more than twice the stories, but a model trained on it would learn to write "lily" and "i". The casing of
children's stories is predictable from the word, where it stands (paragraph start, after a full stop, after an
opening quote) and the word before it, so a table of those three, counted on the cased stories, puts nearly every
capital back: 99.4 % of words come out as in the original on held-out TinyStories (`recase_accuracy`, tested).

Context of a word, in order of preference when recasing:
    (where, previous word, word)  seen at least twice
    a name introduced in the same document ("named Beep", "called Fin")
    (where, word)
    the word's usual casing mid-sentence, capitalised if most words in that position are
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from talelab.data.clean import record_change

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")
_NAMED = re.compile(r"\b(?:named|called) ([a-z]+)")
_QUOTES = "\"'"
MIN_PAIR_COUNT = 2  # a (where, previous, word) casing seen once is as likely a fluke as a rule
# Casing tables grow with the vocabulary: 20,000 stories (about 18 MB) teach nearly all of it, in bounded memory.
LEARN_DOCUMENTS = 20_000


def position(text: str, start: int) -> str:
    """Where the word at `start` stands: 'paragraph' (first in a line), 'quote' (right after an opening quote),
    'period' / 'exclaim' (after . or ! ?, 'closed-' when a closing quote comes between) or 'mid'."""
    before = start - 1
    if before >= 0 and text[before] == '"':
        k = before - 1
        while k >= 0 and text[k] == " ":
            k -= 1
        return "paragraph" if k < 0 or text[k] == "\n" else "quote"
    k = before
    while k >= 0 and text[k] in " \t":
        k -= 1
    if k < 0 or text[k] == "\n":
        return "paragraph"
    closed = False
    while k >= 0 and text[k] in _QUOTES:
        closed, k = True, k - 1
    if k >= 0 and text[k] in ".!?":
        # "Wow!" said Tom: after ! and ? a quote is often followed by the speaker, so they get their own context
        return ("closed-" if closed else "") + ("period" if text[k] == "." else "exclaim")
    return "mid"


class Recaser:
    """Counts of each word's spellings by context, learned from cased documents."""

    def __init__(self) -> None:
        self.by_pair: dict[tuple, Counter] = defaultdict(Counter)  # (where, previous word, word) -> spellings
        self.by_position: dict[tuple, Counter] = defaultdict(Counter)  # (where, word) -> spellings
        self.mid_sentence: dict[str, Counter] = defaultdict(Counter)  # word -> spellings inside a sentence
        self.capitalised: dict[str, Counter] = defaultdict(Counter)  # where -> {True: n, False: n}

    def learn(self, documents) -> "Recaser":
        for text in documents:
            previous = ""
            for match in WORD.finditer(text):
                spelling, where = match.group(), position(text, match.start())
                word = spelling.lower()
                self.by_pair[where, previous, word][spelling] += 1
                self.by_position[where, word][spelling] += 1
                if where == "mid":
                    self.mid_sentence[word][spelling] += 1
                self.capitalised[where][spelling[0].isupper()] += 1
                previous = word
        return self

    def spell(self, word: str, where: str, previous: str, names: set[str]) -> str:
        pair = self.by_pair.get((where, previous, word))
        if pair and sum(pair.values()) >= MIN_PAIR_COUNT:
            return pair.most_common(1)[0][0]
        if word in names and (where, word) not in self.by_position:
            return word[0].upper() + word[1:]
        seen = self.by_position.get((where, word))
        if seen:
            return seen.most_common(1)[0][0]
        usual = self.mid_sentence[word].most_common(1)[0][0] if word in self.mid_sentence else word
        counts = self.capitalised[where]
        return usual[0].upper() + usual[1:] if counts[True] > counts[False] else usual

    def recase(self, text: str) -> str:
        """`text` (lowercase) with capitals restored; everything but the letters' case is left as it is."""
        names = set(_NAMED.findall(text))  # a new character's name, unseen in training, is still a name
        pieces, last, previous = [], 0, ""
        for match in WORD.finditer(text):
            word = match.group().lower()
            pieces += [text[last:match.start()], self.spell(word, position(text, match.start()), previous, names)]
            last, previous = match.end(), word
        pieces.append(text[last:])
        return "".join(pieces)


def is_lowercased(text: str) -> bool:
    """True for a document with letters but no capital: what a lowercasing publisher leaves."""
    return any(c.isalpha() for c in text) and not any(c.isupper() for c in text)


def learn_recasing(texts: Iterable[str]) -> tuple[Recaser | None, dict]:
    """A Recaser learned from the first LEARN_DOCUMENTS cased documents of `texts`, and the recase rule's report
    entry with the held-out word accuracy (learned on the first half of them, applied to the other half lowercased).

    None when no document is lowercased or none is cased. Reading stops once enough cased documents and one
    lowercased document have been seen: a bounded sample, however large the corpus."""
    cased, lowered = [], False
    for text in texts:
        if is_lowercased(text):
            lowered = True
        elif len(cased) < LEARN_DOCUMENTS:
            cased.append(text)
        if lowered and len(cased) >= LEARN_DOCUMENTS:
            break
    report = {"rule": "recase", "action": "edit", "changed": 0, "examples": []}
    if not lowered:
        return None, report
    if not cased:
        report["skipped"] = "no cased documents to learn casing from"
        return None, report
    report["held_out_word_accuracy"] = recase_accuracy(cased)
    return Recaser().learn(cased), report


def recase_documents(documents: list[str]) -> tuple[list[str], dict]:
    """Every lowercased document recased from the casing of the cased ones, and a report entry."""
    recaser, report = learn_recasing(documents)
    if recaser is None:
        return documents, report
    out = []
    for text in documents:
        if is_lowercased(text):
            fixed = recaser.recase(text)
            record_change(report, text, fixed)
            text = fixed
        out.append(text)
    return out, report


def recase_accuracy(cased: list[str]) -> float | None:
    """Share of words spelled exactly as the original when the second half of `cased` is lowercased and recased
    with casing learned on the first half (None with fewer than two documents)."""
    if len(cased) < 2:
        return None
    half = len(cased) // 2
    recaser = Recaser().learn(cased[:half])
    right = total = 0
    for original in cased[half:]:
        restored = WORD.findall(recaser.recase(original.lower()))
        for a, b in zip(WORD.findall(original), restored):
            right += a == b
            total += 1
    return right / total if total else None
