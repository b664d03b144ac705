"""Drop duplicate documents, keeping the first occurrence: exact (hash) and near (MinHash LSH on word 5-grams).

Built for corpora of millions of documents: what is kept per document is numbers, never text.
- Exact: the first 8 bytes of the SHA-1 of the case- and whitespace-folded text (8 bytes per document).
- Near: a 64-slot MinHash signature of the lowercased word 5-grams, by one-permutation hashing (each shingle's
  64-bit hash picks a slot with its top 6 bits; a slot keeps its smallest hash; empty slots borrow the next filled
  one's, rotated), so a document costs one hash per shingle instead of 64. Each slot keeps the lowest 8 bits of
  its hash (b-bit MinHash): 64 bytes per document, the whole index. Two slots agree with probability
  J + (1 - J) / 256 for Jaccard similarity J, so J is estimated as (agreeing share - 1/256) / (1 - 1/256).
  The 16 bands of 4 slots are the signature's 16 uint32 words: documents sharing a band whose estimate comes
  within MARGIN of the threshold are candidate pairs (J = 0.85 shares a band with probability 1 - 1e-5; unrelated
  documents share one about once per 10^9 pairs).
- Confirmation: only the documents of candidate pairs (few) get the decision talelab has always made, datasketch's
  64-permutation MinHash and an LSH over the kept documents, so the same corpus loses the same documents as before
  the index was made compact.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict

import numpy as np
from datasketch import MinHash
from datasketch.lsh import _optimal_param

from talelab.data.clean import record_removal

SHINGLE_WORDS = 5
SLOTS = 64  # b-bit signature slots; 16 bands of 4
MARGIN = 0.2  # pairs whose b-bit estimate is this far below the threshold are not confirmed (4 standard errors)
GROUP_ROWS = 256  # rows of a band group compared at once: 256 x group size x 64 bytes
NUM_PERM = 64  # datasketch permutations of the confirming MinHash: about +-0.06 on Jaccard
SEED = 1  # fixed so that the same corpus always loses the same documents
WORD = re.compile(r"\w+")
_MASK64 = np.uint64(2**64 - 1)
# Odd 64-bit constants (splitmix64's and the golden ratio's): positions in a shingle get different multipliers.
_POSITION = np.array([0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93,
                      0xC2B2AE3D27D4EB4F], dtype=np.uint64)
_ROTATION = np.uint64(0x9E3779B97F4A7C15)  # added per slot of distance when an empty slot borrows a filled one


def words_of(text: str) -> list[str]:
    """The lowercased runs of word characters that shingles are made of."""
    return WORD.findall(text.lower())


def shingles(text: str) -> list[bytes]:
    """The set of lowercased word 5-grams (the whole text as one shingle when it has fewer words), for datasketch."""
    words = words_of(text)
    grams = {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))}
    return [g.encode("utf-8") for g in sorted(grams)]


def exact_key(text: str, cleaned: bool = False) -> int:
    """64-bit hash of the text with case and whitespace differences removed: copies that differ only there collide.

    cleaned: the text went through clean.normalize_whitespace, so its only whitespace is single spaces and one or
    two newlines between words, and replacing those newlines is the same as splitting and joining (3x faster)."""
    folded = text.casefold()
    folded = folded.replace("\n\n", " ").replace("\n", " ") if cleaned else " ".join(folded.split())
    return int.from_bytes(hashlib.sha1(folded.encode("utf-8")).digest()[:8], "little")


# Word hashing, vectorised over a batch's bytes (no Python object per word): a word is a run of ASCII letters,
# digits and underscores or of non-ASCII characters other than U+2000-U+20FF (general punctuation: curly quotes,
# dashes, the ellipsis; super- and subscripts; currency signs), so "didn’t" gives didn and t, as \w+ does. Its hash
# is a polynomial in its bytes.
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[[ord(c) for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"]] = True
_WORD_BYTE[0x80:] = True
_BASE = 0x100000001B3  # odd, so invertible modulo 2**64
_BASE_INVERSE = pow(_BASE, -1, 2**64)


def word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hashes of every lowercased word of every text, in order; words per text)."""
    if not texts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    encoded = [t.lower().encode("utf-8") for t in texts]
    data = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    is_word = np.zeros(len(data) + 2, dtype=bool)  # padded with a non-word byte at each end
    is_word[1:-1] = _WORD_BYTE[data]
    punctuation = np.flatnonzero((data[:-2] == 0xE2) & (data[1:-1] >> 2 == 0x20))  # E2 80-83 xx: U+2000-U+20FF
    for offset in range(1, 4):
        is_word[punctuation + offset] = False
    inside = is_word[1:-1]
    starts, ends = np.flatnonzero(inside & ~is_word[:-2]), np.flatnonzero(inside & ~is_word[2:]) + 1
    powers, inverse = _powers(len(data))
    with np.errstate(over="ignore"):
        prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(data * powers)])
        hashes = _mix((prefix[ends] - prefix[starts]) * inverse[starts] + (ends - starts).astype(np.uint64))
    text_ends = np.cumsum([len(e) + 1 for e in encoded])  # each text's end, separator included
    lengths = np.bincount(np.searchsorted(text_ends, starts, side="right"), minlength=len(texts))
    return hashes, lengths.astype(np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches the top bits, which choose the slot."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_POWERS = (np.ones(1, np.uint64), np.ones(1, np.uint64))  # BASE**i and BASE**-i modulo 2**64, grown on demand


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """BASE**i and BASE**-i modulo 2**64 for i < n, computed once per process for the longest batch seen."""
    global _POWERS
    if len(_POWERS[0]) < n:
        with np.errstate(over="ignore"):
            _POWERS = tuple(np.concatenate([np.ones(1, np.uint64), np.cumprod(np.full(2 * n, b, dtype=np.uint64))])
                            for b in (_BASE, _BASE_INVERSE))
    return _POWERS[0][:n], _POWERS[1][:n]


def signatures(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(documents, 64) uint8 b-bit MinHash signatures of each document's word 5-grams, from word_hashes' output (a
    document with fewer words is one shingle of all of them)."""
    n = len(lengths)
    with np.errstate(over="ignore"):
        k = SHINGLE_WORDS
        windows = len(ids) - k + 1
        shingles = np.zeros(max(windows, 0), dtype=np.uint64)
        for position in range(k):
            shingles += ids[position:position + max(windows, 0)] * _POSITION[position]
        starts = np.cumsum(lengths) - lengths
        # A window is a shingle of one document when it ends inside the document it starts in.
        counts = np.maximum(lengths - k + 1, 0)
        owner = np.repeat(np.arange(n), counts)
        first = np.repeat(starts, counts) + np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)
        hashes = shingles[first]
        short = np.flatnonzero(lengths < k)
        if len(short):  # fewer words than a shingle: the whole word sequence is the document's one shingle
            whole = np.array([sum(int(ids[starts[d] + i]) * int(_POSITION[i]) for i in range(lengths[d])) & 2**64 - 1
                              for d in short], dtype=np.uint64)  # rare: a loop is fine
            owner, hashes = np.concatenate([owner, short]), np.concatenate([hashes, whole])
        hashes = _mix(hashes)
        slot = (hashes >> np.uint64(58)).astype(np.int64)
        minima = np.full(n * SLOTS, _MASK64, dtype=np.uint64)
        np.minimum.at(minima, owner * SLOTS + slot, hashes)
        minima = minima.reshape(n, SLOTS)
        minima = _fill_empty_slots(minima)
    return (minima & np.uint64(0xFF)).astype(np.uint8)


def _fill_empty_slots(minima: np.ndarray) -> np.ndarray:
    """Each empty slot takes the next filled slot's value (circularly) plus _ROTATION per slot of distance, so
    documents with few shingles still compare slot by slot (Shrivastava & Li's rotation densification)."""
    empty = minima == _MASK64
    if not empty.any():
        return minima
    index = np.where(~empty, np.arange(SLOTS), 2 * SLOTS)
    doubled = np.concatenate([index, index + SLOTS * (index < SLOTS)], axis=1)  # a filled slot seen again, +64
    nearest = np.minimum.accumulate(doubled[:, ::-1], axis=1)[:, ::-1][:, :SLOTS]  # next filled slot at or after
    distance = (nearest - np.arange(SLOTS)).astype(np.uint64)
    source = np.take_along_axis(minima, nearest % SLOTS, axis=1)
    filled = np.where(empty, source + distance * _ROTATION, minima)
    return filled


def estimated_jaccard(agreeing: np.ndarray) -> np.ndarray:
    """Jaccard similarity from the share of agreeing 8-bit slots, corrected for chance agreement (1/256)."""
    return (agreeing - 1 / 256) / (1 - 1 / 256)


def first_occurrences(keys: np.ndarray) -> np.ndarray:
    """A mask that is True at the first document of each exact key."""
    keep = np.zeros(len(keys), dtype=bool)
    keep[np.unique(keys, return_index=True)[1]] = True
    return keep


def candidate_pairs(signatures: np.ndarray, candidates: np.ndarray, threshold: float) -> dict[int, list[int]]:
    """{later document: [earlier documents]} among `candidates` (ascending indices) that share a band of their
    b-bit signatures and whose b-bit estimate comes within MARGIN of the threshold: the few pairs worth confirming.

    Memory stays at a few bytes per document: one band's keys at a time, and a large group of documents sharing a
    band (short stories of one template) is compared GROUP_ROWS rows at a time."""
    if threshold <= 0 or len(candidates) < 2:
        return {}
    bands = np.ascontiguousarray(signatures).view(np.uint32)  # (n, 16): 4 slots per band, no copy
    pairs = defaultdict(set)
    for band in range(bands.shape[1]):
        # One sort of (band key, position) orders by key and, within a key, by document: stable, and ~3x faster
        # than a stable argsort of the keys. Built in place: this loop's arrays are the stage's largest.
        ordered = bands[candidates, band].astype(np.uint64)
        ordered <<= np.uint64(32)
        ordered |= np.arange(len(candidates), dtype=np.uint64)
        ordered.sort()
        members_in_order = candidates[(ordered & np.uint64(0xFFFFFFFF)).astype(np.int64)]
        ordered >>= np.uint64(32)
        bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        del ordered
        bounds = np.concatenate([[0], bounds, [len(members_in_order)]])
        sizes = np.diff(bounds)
        two = bounds[:-1][sizes == 2]  # most shared bands join two documents: compare those all at once
        for chunk in range(0, len(two), GROUP_ROWS * GROUP_ROWS):
            first = members_in_order[two[chunk:chunk + GROUP_ROWS * GROUP_ROWS]]
            second = members_in_order[two[chunk:chunk + GROUP_ROWS * GROUP_ROWS] + 1]
            close = _close(signatures[first], signatures[second], threshold)
            for earlier, later in zip(first[close].tolist(), second[close].tolist()):
                pairs[later].add(earlier)
        for g in np.flatnonzero(sizes > 2):
            members = members_in_order[bounds[g]:bounds[g + 1]]
            rows = signatures[members]
            for start in range(0, len(members), GROUP_ROWS):
                block = rows[start:start + GROUP_ROWS, None, :]
                for i, j in zip(*np.nonzero(_close(block, rows[None, :, :], threshold))):
                    if start + i < j:
                        pairs[int(members[j])].add(int(members[start + i]))
    return {later: sorted(earlier) for later, earlier in pairs.items()}


def _close(a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """Whether signatures `a` and `b` (broadcast) estimate a Jaccard within MARGIN of the threshold."""
    return estimated_jaccard(np.count_nonzero(a == b, axis=-1) / SLOTS) >= threshold - MARGIN


def confirm_near_duplicates(pairs: dict[int, list[int]], texts: dict[int, str], threshold: float) -> dict[int, tuple]:
    """{document: (earlier kept document it duplicates, estimated Jaccard)}, decided as talelab always has: a
    datasketch MinHash (64 permutations, seed 1) of each document of the candidate pairs, and an LSH over the kept
    documents (banded for recall, weights 0.1/0.9): a document goes when an earlier kept document shares a band with
    it and their estimate reaches the threshold. The first occurrence stays; a document similar only to a dropped
    one is kept. `texts` holds the text of every document named in `pairs`."""
    if not pairs:
        return {}
    names = sorted(texts)
    sketches = dict(zip(names, MinHash.bulk((shingles(texts[i]) for i in names), num_perm=NUM_PERM, seed=SEED)))
    # Above 0.95 datasketch cannot band 64 permutations (fewer than two bands), so band at 0.95 and let the estimate
    # apply the stricter threshold.
    bands, rows = _optimal_param(min(threshold, 0.95), NUM_PERM, 0.1, 0.9)
    matches = {}
    for later in sorted(pairs):
        mine = sketches[later].hashvalues
        for earlier in pairs[later]:
            theirs = sketches[earlier].hashvalues
            shared_band = any(np.array_equal(mine[b * rows:(b + 1) * rows], theirs[b * rows:(b + 1) * rows])
                              for b in range(bands))
            if earlier in matches or not shared_band:
                continue
            estimate = sketches[earlier].jaccard(sketches[later])
            if estimate >= threshold:
                matches[later] = (earlier, estimate)
                break
    return matches


def pair_members(pairs: dict[int, list[int]]) -> set[int]:
    """Every document named in candidate pairs."""
    return set(pairs).union(*pairs.values())


def near_duplicate_reason(estimate: float, earlier_text: str) -> str:
    return f"~{estimate:.0%} similar to an earlier one starting {earlier_text[:60]!r}"


# --- lists of documents (small corpora, tests): the same decisions as prepare's streaming path ---------------------


def drop_exact_duplicates(docs: list[str]) -> tuple[list[str], dict]:
    """Documents whose normalised text was not seen before, and a report entry for the rest."""
    report = {"rule": "exact_duplicate", "action": "drop", "removed": 0, "examples": []}
    keep = first_occurrences(np.array([exact_key(d) for d in docs], dtype=np.uint64))
    for text, kept in zip(docs, keep):
        if not kept:
            record_removal(report, text, "same text as an earlier document")
    return [d for d, k in zip(docs, keep) if k], report


def drop_near_duplicates(docs: list[str], threshold: float) -> tuple[list[str], dict]:
    """Documents with no earlier kept document of estimated Jaccard similarity >= threshold (0 keeps all)."""
    report = {"rule": "near_duplicate", "action": "drop", "removed": 0, "examples": []}
    pairs = candidate_pairs(signatures(*word_hashes(docs)), np.arange(len(docs)), threshold)
    matches = confirm_near_duplicates(pairs, {i: docs[i] for i in pair_members(pairs)}, threshold)
    for i, (earlier, estimate) in sorted(matches.items()):
        record_removal(report, docs[i], near_duplicate_reason(estimate, docs[earlier]))
    return [d for i, d in enumerate(docs) if i not in matches], report


def dedupe_documents(docs: list[str], threshold: float) -> tuple[list[str], list[dict]]:
    """Exact then near duplicates removed, with one report entry for each."""
    docs, exact = drop_exact_duplicates(docs)
    docs, near = drop_near_duplicates(docs, threshold)
    return docs, [exact, near]
