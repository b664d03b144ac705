"""Dataset statistics of a prepared corpus, as the from-scratch study tabulates them (prepare draws their two charts
with talelab.plots).

Words are dedupe.word_hashes' words (lowercased runs of letters, digits and underscores, curly quotes and dashes
between them), counted by their 64-bit hashes: what is kept is 16 bytes per distinct word, never the words. Tokens are
counted with a tokenizer when prepare is given one (`--stats-tokenizer`): encoded as the shards will be, without
bos/eos.
"""

from __future__ import annotations

import numpy as np

COVERAGE_POINTS = (500, 1000, 2048, 5000, 10000, 20000)


class WordCounts:
    """Occurrences per word hash, added batch by batch and merged in bulk (vectorised, no dict per word)."""

    MERGE_AT = 4_000_000  # pending entries before they are merged: bounds memory at ~64 MB on top of the counts

    def __init__(self):
        self.hashes, self.counts = np.zeros(0, np.uint64), np.zeros(0, np.int64)
        self._pending, self._size = [], 0

    def add(self, hashes: np.ndarray, counts: np.ndarray) -> None:
        self._pending.append((hashes, counts))
        self._size += len(hashes)
        if self._size > self.MERGE_AT:
            self._merge()

    def absorb(self, other: WordCounts) -> None:
        """Add everything `other` counted."""
        for hashes, counts in [(other.hashes, other.counts), *other._pending]:
            self.add(hashes, counts)

    def compact(self) -> None:
        """Merge what is pending now."""
        if self._pending:
            self._merge()

    def _merge(self) -> None:
        hashes = np.concatenate([self.hashes] + [h for h, _ in self._pending])
        counts = np.concatenate([self.counts] + [c for _, c in self._pending])
        self.hashes, where = np.unique(hashes, return_inverse=True)
        self.counts = np.bincount(where, weights=counts, minlength=len(self.hashes)).astype(np.int64)
        self._pending, self._size = [], 0

    def frequencies(self) -> np.ndarray:
        """The positive counts, most frequent first."""
        self._merge()
        return np.sort(self.counts[self.counts > 0])[::-1]


def coverage_curve(frequencies: np.ndarray) -> np.ndarray:
    """Share of running words covered by the N most frequent words, for N = 1 ... (frequencies most frequent first)."""
    return np.cumsum(frequencies) / max(int(frequencies.sum()), 1)


def corpus_statistics(word_counts: np.ndarray, frequencies: np.ndarray, token_counts: np.ndarray | None = None,
                      token_ids: np.ndarray | None = None, tokenizer: str = "") -> dict:
    """Documents, words, unique words, words per document (mean and SD), coverage of running words by the N most
    frequent words, and with a tokenizer its tokens and distinct tokens."""
    covered = coverage_curve(frequencies)
    stats = {
        "documents": int(len(word_counts)),
        "words": int(word_counts.sum()),
        "unique_words": len(frequencies),
        "words_per_document_mean": round(float(word_counts.mean()), 1) if len(word_counts) else 0.0,
        "words_per_document_sd": round(float(word_counts.std()), 1) if len(word_counts) else 0.0,
        "coverage": {str(n): round(float(covered[min(n, len(covered)) - 1]), 4) for n in COVERAGE_POINTS
                     if len(covered)},
    }
    if tokenizer:
        stats.update(tokenizer=tokenizer, tokens=int(token_counts.sum()), unique_tokens=int((token_ids > 0).sum()))
    return stats


def statistics_markdown(stats: dict) -> list[str]:
    """The statistics as a table and a coverage line for report.md."""
    lines = ["", "## Statistics", "", "| documents | words | unique words | words per document |"
             + (" tokens | unique tokens |" if "tokens" in stats else ""),
             "|---:|---:|---:|---:|" + ("---:|---:|" if "tokens" in stats else ""),
             f"| {stats['documents']:,} | {stats['words']:,} | {stats['unique_words']:,} | "
             f"{stats['words_per_document_mean']} ± {stats['words_per_document_sd']} |"
             + (f" {stats['tokens']:,} | {stats['unique_tokens']:,} |" if "tokens" in stats else "")]
    if "tokens" in stats:
        lines += ["", f"Tokens by `{stats['tokenizer']}`, without bos/eos."]
    if stats["coverage"]:
        shares = ", ".join(f"{int(n):,}: {share:.1%}" for n, share in stats["coverage"].items())
        lines += ["", f"Share of running words covered by the N most frequent words: {shares}.", "",
                  "![words per document](lengths.png) ![coverage](coverage.png)"]
    return lines
