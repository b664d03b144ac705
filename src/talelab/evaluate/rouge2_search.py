"""The highest ROUGE-2 precision of each generation against any of many stories, and which story gives it: exact,
streamed, on every core.

ROUGE-2 precision, as rouge-score computes it (`RougeScorer(["rouge2"]).score(story, generation).precision`, no
stemming): the generation's bigrams of rouge-score tokens (lowercased runs of a-z and 0-9) that the story also holds,
each counted at most as often as the story holds it, over the generation's bigrams. Here it is counted in numpy for
a batch of stories at once:
- a story's tokens are found as rouge-score finds them, in bytes (`rouge_tokens`: lowercase, every byte outside a-z
  and 0-9 a separator; UTF-8 bytes of other characters are all >= 0x80, so the tokens are the same);
- only tokens of some generation get a number, and only bigrams of some generation a column;
- the clipped overlap sum_b min(story count, generation count) is sum over k >= 1 of the bigrams both hold at least
  k times: one sparse product per k, and k stops where no story count reaches it.
Stories stream through `talelab.data.parallel.ordered_map` in batches of BATCH_STORIES, so memory holds a few
batches, whatever the number of stories (peak RSS 0.14 GB for 231,700 stories). Cost, measured on the development
machine: about 45 us of CPU a story against 32 generations (57 us against 100, 110 us against 1,000), so the 2.1M
stories of TinyStories take about 100 CPU-seconds, spread over the workers; reading the split costs the main process
about 10 us a story.
"""

from __future__ import annotations

from collections.abc import Iterable, Sized
from dataclasses import dataclass
from itertools import repeat

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from talelab.data.parallel import batched, ordered_map

BATCH_STORIES = 2048
_KEPT = b"abcdefghijklmnopqrstuvwxyz0123456789"
# bytes.translate table: rouge-score's separators (anything but a-z, 0-9) become spaces
_SEPARATE = bytes(byte if byte in _KEPT else ord(" ") for byte in range(256))
_STORY_END = b"\x01"  # a token no text can hold (translate turns every \x01 of a text into a space)
END, UNKNOWN = -2, -1  # numbers of the story-end token and of words no generation holds


def rouge_tokens(text: str) -> list[bytes]:
    """rouge-score's tokens of `text` (its DefaultTokenizer without stemming), as bytes."""
    return separated(text).split()


def separated(text: str) -> bytes:
    """The text lowercased, in bytes, with every separator a space: its rouge-score tokens are its split()."""
    return text.lower().encode("utf-8", "surrogatepass").translate(_SEPARATE)


@dataclass
class Generations:
    """The generations as the search needs them: their words numbered, their bigrams as columns."""

    words: dict[bytes, int]  # word -> number; the story-end token -> END
    width: int  # words numbered: a bigram's code is first * width + second
    bigrams: np.ndarray  # sorted codes of every bigram of the generations: column c is bigram bigrams[c]
    levels: list[sp.csr_matrix]  # levels[k]: (columns, generations), 1 where a generation holds the bigram > k times
    sizes: np.ndarray  # bigrams per generation, the precision's denominator

    @classmethod
    def of(cls, texts: list[str]) -> Generations:
        """The generations' words, bigram columns and bigram counts."""
        tokens = [rouge_tokens(text) for text in texts]
        words = {word: i for i, word in enumerate(sorted({w for t in tokens for w in t}))}
        codes = [np.array([words[a] * len(words) + words[b] for a, b in zip(t, t[1:])], np.int64) for t in tokens]
        bigrams = np.unique(np.concatenate([np.zeros(0, np.int64), *codes]))
        columns, generations, counts = [], [], []
        for g, code in enumerate(codes):
            found, count = np.unique(code, return_counts=True)
            columns.append(np.searchsorted(bigrams, found))
            generations.append(np.full(len(found), g))
            counts.append(count)
        columns, generations, counts = (np.concatenate([np.zeros(0, np.int64), *a]) for a in
                                        (columns, generations, counts))
        levels = []
        for k in range(int(counts.max(initial=0))):
            more = counts > k
            levels.append(sp.csr_matrix((np.ones(int(more.sum())), (columns[more], generations[more])),
                                        shape=(len(bigrams), len(texts))))
        return cls({**words, _STORY_END: END}, len(words), bigrams, levels, np.array([len(c) for c in codes]))

    def precisions(self, stories: list[str]) -> np.ndarray:
        """(stories, generations): the ROUGE-2 precision of each generation against each story."""
        overlap = np.zeros((len(stories), len(self.sizes)))
        if not len(self.bigrams):
            return overlap
        tokens = b" \x01 ".join(map(separated, stories)).split()
        numbers = np.fromiter(map(self.words.get, tokens, repeat(UNKNOWN)), np.int64, len(tokens))
        story = np.cumsum(numbers == END)  # the story each token belongs to
        first, second = numbers[:-1], numbers[1:]
        both_known = (first >= 0) & (second >= 0)  # the story-end token breaks every bigram across two stories
        code = first[both_known] * self.width + second[both_known]
        column = np.searchsorted(self.bigrams, code).clip(max=len(self.bigrams) - 1)
        held = self.bigrams[column] == code
        # (story, column) pairs with the number of times the story holds that bigram
        pairs, counts = np.unique(story[:-1][both_known][held] * len(self.bigrams) + column[held], return_counts=True)
        rows, columns = np.divmod(pairs, len(self.bigrams))
        for k, level in enumerate(self.levels):  # min(a, b) = the number of k >= 0 with a > k and b > k
            reached = counts > k
            if not reached.any():
                break
            rows, columns, counts = rows[reached], columns[reached], counts[reached]
            at_least = sp.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(stories), len(self.bigrams)))
            overlap += (at_least @ level).toarray()
        return overlap / np.maximum(self.sizes, 1)  # rouge-score's precision: overlap / max(bigrams, 1)


_generations: Generations | None = None  # a worker's generations, set once by _keep


def _keep(generations: Generations) -> None:
    global _generations
    _generations = generations


def _best_of_batch(batch: tuple[int, list[str]]) -> tuple[np.ndarray, np.ndarray, int]:
    """(highest precision per generation, index of the first story of the batch that reaches it, stories)."""
    start, stories = batch
    scores = _generations.precisions(stories)
    rows = scores.argmax(axis=0)
    return scores[rows, np.arange(scores.shape[1])], rows + start, len(stories)


def max_rouge2_precision(generations: list[str], stories: Iterable[str], workers: int = 0,
                         batch_stories: int = BATCH_STORIES, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(highest ROUGE-2 precision of each generation against any story, index of the first story that reaches it;
    -1 where no story shares a bigram). The stories are read once, in order, on `workers` processes (0: every
    core; a few batches run here)."""
    best, where = np.zeros(len(generations)), np.full(len(generations), -1)
    numbered = ((i * batch_stories, batch) for i, batch in enumerate(batched(stories, batch_stories)))
    bar = tqdm(desc="max ROUGE-2 over the training stories", unit="story", disable=None if progress else True,
               total=len(stories) if isinstance(stories, Sized) else None)
    for scores, rows, count in ordered_map(_best_of_batch, numbered, workers, _keep, (Generations.of(generations),)):
        better = scores > best  # strictly: on a tie the earlier story stays
        best[better], where[better] = scores[better], rows[better]
        bar.update(count)
    bar.close()
    return best, where
