"""Drop duplicate documents, keeping the first occurrence: exact (hash) and near (MinHash LSH on word 5-grams)."""

from __future__ import annotations

import hashlib
import re

from datasketch import MinHash, MinHashLSH

from talelab.data.clean import record_removal

SHINGLE_WORDS = 5
NUM_PERM = 64  # 64 permutations estimate Jaccard to about +-0.06, plenty to tell a copy from a different story
SEED = 1  # fixed so that the same corpus always loses the same documents
_WORD = re.compile(r"\w+")


def exact_key(text: str) -> str:
    """Hash of the text with case and whitespace differences removed: copies that differ only there collide."""
    return hashlib.sha1(" ".join(text.casefold().split()).encode("utf-8")).hexdigest()


def shingles(text: str) -> list[bytes]:
    """The set of lowercased word 5-grams (the whole text as one shingle when it has fewer words)."""
    words = _WORD.findall(text.lower())
    grams = {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(max(1, len(words) - SHINGLE_WORDS + 1))}
    return [g.encode("utf-8") for g in sorted(grams)]


def drop_exact_duplicates(docs: list[str]) -> tuple[list[str], dict]:
    """Documents whose normalised text was not seen before, and a report entry for the rest."""
    report = {"rule": "exact_duplicate", "action": "drop", "removed": 0, "examples": []}
    seen, kept = set(), []
    for text in docs:
        key = exact_key(text)
        if key in seen:
            record_removal(report, text, "same text as an earlier document")
        else:
            seen.add(key)
            kept.append(text)
    return kept, report


def drop_near_duplicates(docs: list[str], threshold: float) -> tuple[list[str], dict]:
    """Documents with no earlier document of estimated Jaccard similarity >= threshold (0 keeps all)."""
    report = {"rule": "near_duplicate", "action": "drop", "removed": 0, "examples": []}
    if threshold <= 0 or not docs:
        return list(docs), report
    # bulk() shares one set of permutations across all sketches: ~20x faster than a MinHash per document.
    sketches = MinHash.bulk((shingles(d) for d in docs), num_perm=NUM_PERM, seed=SEED)
    # Every LSH candidate is confirmed below, so a false positive only costs a comparison while a false negative
    # keeps a duplicate: weight the banding towards recall. Above 0.95 datasketch cannot band 64 permutations
    # (fewer than two bands), so band at 0.95 and let the confirmation apply the stricter threshold.
    lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=NUM_PERM, weights=(0.1, 0.9))
    kept = []
    for i, (text, sketch) in enumerate(zip(docs, sketches)):
        # LSH returns candidates that share a band; confirm with the estimate so the threshold means what it says.
        # Sorted, so that the match reported is the earliest one whatever order the candidate set has.
        match = next((j for j in sorted(lsh.query(sketch)) if sketches[j].jaccard(sketch) >= threshold), None)
        if match is None:
            lsh.insert(i, sketch)
            kept.append(text)
        else:
            why = f"~{sketches[match].jaccard(sketch):.0%} similar to an earlier one starting {docs[match][:60]!r}"
            record_removal(report, text, why)
    return kept, report


def dedupe_documents(docs: list[str], threshold: float) -> tuple[list[str], list[dict]]:
    """Exact then near duplicates removed, with one report entry for each."""
    docs, exact = drop_exact_duplicates(docs)
    docs, near = drop_near_duplicates(docs, threshold)
    return docs, [exact, near]

