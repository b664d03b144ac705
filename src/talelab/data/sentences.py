"""Sentences of children's stories: splitting that respects quotes and abbreviations, and shuffling.

Used by the contrastive objective, the quality score and shuffled-continuation preference pairs.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Titles and short forms after which a full stop does not end a sentence.
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "mt", "vs", "etc", "e.g", "i.e", "no", "ft"}
_END = re.compile(r"[.!?]+[\"”’')\]]*")  # end marks, then any closing quotes or brackets
_LAST_WORD = re.compile(r"[\w.]+$")


def split_sentences(text: str) -> list[str]:
    """Sentences of a children's story. An end mark (.!? with any closing quote after it) ends one when a space and
    a capital or an opening quote follow, unless a quotation is still open ("Wait! Come back." stays whole) or the
    word before a full stop is an abbreviation (Mr. Brown). A line break always ends one."""
    sentences = []
    for paragraph in text.split("\n"):
        start, i, quote_open = 0, 0, False
        while i < len(paragraph):
            char = paragraph[i]
            if char in "\"“”":
                quote_open = char == "“" or (char == '"' and not quote_open)
            if char not in ".!?":
                i += 1
                continue
            end = _END.match(paragraph, i).end()
            for closing in paragraph[i:end]:
                if closing in "\"”":
                    quote_open = False
            word = _LAST_WORD.findall(paragraph[start:i])
            abbreviation = char == "." and word and word[0].lower() in ABBREVIATIONS
            follows = paragraph[end:end + 2]
            if (not quote_open and not abbreviation and len(follows) == 2 and follows[0] == " "
                    and (follows[1].isupper() or follows[1] in "\"“")):
                sentences.append(paragraph[start:end].strip())
                start = end
            i = end
        if paragraph[start:].strip():
            sentences.append(paragraph[start:].strip())
    return sentences


def shuffle_sentences(text: str, generator: torch.Generator) -> str:
    """The story with its sentences in a random order other than the original (when there are two or more)."""
    import torch  # here, not at the top: prepare's worker processes split sentences and must not load torch (250 MB)

    sentences = split_sentences(text)
    if len(sentences) < 2:
        return text
    order = torch.randperm(len(sentences), generator=generator).tolist()
    if order == sorted(order):  # the identity is no shuffle: rotate by one instead
        order = order[1:] + order[:1]
    return " ".join(sentences[i] for i in order)
