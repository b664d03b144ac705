"""Duplicate removal: exact and near copies go, the first occurrence stays, distinct stories survive."""

from __future__ import annotations

import time

from talelab import paths
from talelab.data.dedupe import dedupe_documents, drop_exact_duplicates, drop_near_duplicates
from talelab.data.sources import read_documents


def stories(n: int) -> list[str]:
    return read_documents(paths.TINYSTORIES_TRAIN, max_documents=n)


def test_exact_duplicate_differing_only_in_case_and_spacing_is_dropped_and_the_first_kept():
    docs = ["The cat sat.", "Another story.", "the  CAT\nsat."]
    kept, report = drop_exact_duplicates(docs)
    assert kept == ["The cat sat.", "Another story."]
    assert report["removed"] == 1 and report["examples"][0]["text"] == "the  CAT\nsat."


def test_story_with_one_word_changed_is_a_near_duplicate_of_the_original():
    original = stories(1)[0]
    assert " needle " in original
    edited = original.replace(" needle ", " pin ", 1)
    kept, report = drop_near_duplicates([original, stories(3)[2], edited], threshold=0.85)
    assert kept == [original, stories(3)[2]]
    assert report["removed"] == 1 and "similar to an earlier one starting 'One day, a little girl" in \
        report["examples"][0]["why"]


def test_distinct_tinystories_are_not_near_duplicates():
    docs = stories(300)
    kept, report = drop_near_duplicates(docs, threshold=0.85)
    assert kept == docs and report["removed"] == 0


def test_threshold_zero_turns_near_duplicate_detection_off():
    original = stories(1)[0]
    docs = [original, original.replace(" needle ", " pin ", 1)]
    assert drop_near_duplicates(docs, threshold=0)[0] == docs


def test_threshold_one_removes_only_copies_with_the_same_shingles():
    original = stories(1)[0]
    docs = [original, original.upper(), original.replace(" needle ", " pin ", 1)]
    kept, report = drop_near_duplicates(docs, threshold=1.0)
    assert kept == [original, docs[2]] and report["removed"] == 1


def test_dedupe_runs_exact_then_near_and_is_deterministic():
    original = stories(1)[0]
    docs = [original, original, original.replace(" needle ", " pin ", 1), stories(2)[1]]
    first = dedupe_documents(docs, threshold=0.85)
    assert first == dedupe_documents(docs, threshold=0.85)
    kept, (exact, near) = first
    assert kept == [original, stories(2)[1]] and exact["removed"] == 1 and near["removed"] == 1


def test_five_thousand_documents_dedupe_in_a_few_seconds():
    # The lowercased file is a superset of train-head: its paragraphs give ~20,000 real, varied documents.
    docs = read_documents("data/tinystories/train-head-lowercase.txt", max_documents=5000)
    started = time.perf_counter()
    kept, _ = dedupe_documents(docs, threshold=0.85)
    assert time.perf_counter() - started < 10
    assert len(kept) > 4900


def test_exact_key_of_cleaned_text_is_the_key_of_the_text():
    from talelab.data.clean import clean_document, drop_rules
    from talelab.data.dedupe import exact_key

    drops = drop_rules(0, 10**6, 1.0)
    texts = read_documents(paths.TINYSTORIES_VALID) + ["A\n\nB  c\t\n\n\n d\u00a0e ", "x \n y", " Lead and trail "]
    for text in texts:
        cleaned = clean_document(text, drops)[0]
        assert exact_key(cleaned, cleaned=True) == exact_key(cleaned), repr(cleaned[:60])


def test_candidate_pairs_do_not_depend_on_how_many_rows_are_compared_at_once(monkeypatch):
    import numpy as np

    from talelab.data import dedupe

    docs = stories(200)
    docs += [d.replace(" the ", " a ", 1) for d in docs[:40]] + [docs[0][: len(docs[0]) // 2]] * 5
    sketches = dedupe.signatures(*dedupe.word_hashes(docs))
    whole = dedupe.candidate_pairs(sketches, np.arange(len(docs)), 0.85)
    monkeypatch.setattr(dedupe, "GROUP_ROWS", 3)
    assert dedupe.candidate_pairs(sketches, np.arange(len(docs)), 0.85) == whole and len(whole) >= 40
