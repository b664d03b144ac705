"""Memorization and novelty: nearest training story, copy classification, novelty BLEU, on real TinyStories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from talelab import paths
from talelab.data.sentences import split_sentences
from talelab.data.sources import read_documents
from talelab.data.split_view import SplitView
from talelab.errors import InputError
from talelab.evaluate.memorization import (NearestStoryIndex, classify, find_names, memorization_section,
                                           novelty_bleu, novelty_figures)
from talelab.evaluate.report import read_stories

SOURCE = ("Once upon a time, there was a girl named Lily. Lily liked to play with her red ball in the park. "
          "One day, Lily lost the ball.")


@pytest.fixture(scope="module")
def stories(shared) -> list[str]:
    return read_documents(shared / paths.TINYSTORIES_TRAIN, format="eot")[:300]


@pytest.fixture(scope="module")
def index(stories) -> NearestStoryIndex:
    return NearestStoryIndex(stories, chunk_rows=64, progress=False)


@pytest.fixture(scope="module")
def unseen(shared) -> str:
    """A validation story: never in the training stories."""
    return max(read_documents(shared / paths.TINYSTORIES_VALID, format="blank-line")[1:20], key=len)


def swap_name(story: str) -> tuple[str, str]:
    """The story with its most frequent name replaced by Zara, and that name."""
    name = max(find_names(story), key=lambda n: story.count(n.capitalize()))
    return story.replace(name.capitalize(), "Zara"), name


def test_a_copied_training_story_is_an_exact_copy_with_cosine_1(index, stories):
    cosines, found = index.search([stories[17]], k=3)
    assert found[0][0] == 17 and cosines[0][0] == pytest.approx(1.0, abs=1e-6)
    assert cosines[0][1] < 0.9
    assert classify(stories[17], stories[17]) == {"label": "exact copy", "overlap": 1.0, "masked_overlap": 1.0}


def test_a_name_swapped_story_is_a_template_match_with_hand_counted_overlaps():
    swapped = SOURCE.replace("Lily", "Zara")
    # 27 words, 24 word 4-grams; the 9 that hold a "zara" (words 10, 11 and 24) are not in the source: 15/24.
    assert find_names(swapped) == {"zara"}
    assert classify(swapped, SOURCE) == {"label": "template match", "overlap": 0.625, "masked_overlap": 1.0}


def test_a_story_with_one_swapped_name_is_a_template_match_even_when_most_4grams_match(stories):
    story = next(s for s in stories if sum(s.count(n.capitalize()) for n in find_names(s)) == 1 and len(s) > 600)
    swapped, name = swap_name(story)
    verdict = classify(swapped, story)
    assert verdict["overlap"] >= 0.8 and verdict["masked_overlap"] == 1.0  # only the name's 4-grams differ
    assert verdict["label"] == "template match", name


def test_an_original_story_is_original(index, stories, unseen):
    cosines, found = index.search([unseen], k=1)
    assert cosines[0][0] < 0.8
    assert classify(unseen, stories[found[0][0]])["label"] == "original"


def test_the_nearest_story_of_a_lightly_edited_story_is_its_source(index, stories):
    sentences = split_sentences(stories[42])
    edited = " ".join(sentences[:-1]).replace(" big ", " huge ").replace(" happy", " glad")
    assert edited != stories[42]
    cosines, found = index.search([edited, stories[5]], k=1)
    assert found[:, 0].tolist() == [42, 5]
    assert 0.8 < cosines[0][0] < 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_search_returns_the_same_neighbours_and_cosines_as_brute_force(stories, unseen, dtype):
    from sklearn.metrics.pairwise import cosine_similarity

    index = NearestStoryIndex(stories, chunk_rows=37, dense_terms=64, dtype=dtype, progress=False)
    queries = [unseen, stories[3][:300], "The dog and the cat played in the sun.", "zzz qqq"]
    cosines, found = index.search(queries, k=3, batch_size=3)
    exact = cosine_similarity(index.vectorizer.transform(queries), index.vectors(range(len(stories))))
    expected = np.argsort(-exact, axis=1, kind="stable")[:, :3]
    assert found[:3].tolist() == expected[:3].tolist()
    assert np.allclose(cosines[:3], np.take_along_axis(exact, expected, 1)[:3], atol=1e-6)
    assert cosines[3].tolist() == [0.0, 0.0, 0.0]  # no known word: nothing is near


def same_csr(a, b) -> bool:
    """The same stored arrays: values, term numbers and their order within each row, row starts."""
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in ("data", "indices", "indptr"))


def test_the_index_holds_scikit_learns_tfidf_vectors_bit_for_bit_as_one_byte_counts(stories):
    from sklearn.feature_extraction.text import TfidfVectorizer

    fitted = TfidfVectorizer(stop_words="english", dtype=np.float32)
    expected = fitted.fit_transform(stories)
    index = NearestStoryIndex(stories, chunk_rows=64, progress=False)  # streamed in 5 chunks of counts
    assert same_csr(index.vectors(range(len(stories))), expected)
    assert index.vectorizer.vocabulary_ == fitted.vocabulary_ and np.array_equal(index.idf, fitted.idf_)
    assert same_csr(index.vectors([299, 3, 3]), expected[[299, 3, 3]])  # rows from any chunk, in any order
    queries = [stories[0][:200], "The dog and the cat played in the sun."]
    assert same_csr(index.vectorizer.transform(queries), fitted.transform(queries))
    # Stored per story: its term numbers (4 bytes each) and counts (1 byte each), and where its row starts (4 bytes,
    # one extra per chunk): never the float32 values or the 512 dense columns.
    assert index.nnz == expected.nnz and index.nbytes == 5 * expected.nnz + 4 * (len(stories) + 5)


def test_a_term_counted_more_than_255_times_keeps_its_exact_count():
    from sklearn.feature_extraction.text import TfidfVectorizer

    stories = ["ball " * 300 + "tree", "The red ball rolled.", "A tree grew tall."]
    index = NearestStoryIndex(stories, progress=False)
    assert index.chunks[0].counts.dtype == np.uint16
    assert same_csr(index.vectors(range(3)), TfidfVectorizer(stop_words="english", dtype=np.float32)
                    .fit_transform(stories))
    # "ball" and "tree" occur in 2 of 3 stories: the same idf ln(4/3) + 1, so story 0 is (300, 1) / sqrt(300² + 1).
    cosines, found = index.search(["ball"], k=1)
    assert found[0][0] == 0 and cosines[0][0] == pytest.approx(300 / np.sqrt(300**2 + 1), abs=1e-6)


@pytest.mark.slow
def test_the_index_of_a_prepared_split_finds_what_the_index_of_its_story_list_finds(prepared, unseen, tmp_path):
    listed = read_documents(prepared / "train.jsonl")
    view = read_stories(str(prepared))  # what talelab eval --train-data runs/prepared reads
    assert isinstance(view, SplitView) and len(view) == len(listed)
    from_list = NearestStoryIndex(listed, chunk_rows=50, progress=False)
    from_file = NearestStoryIndex(view, chunk_rows=50, progress=False)
    assert same_csr(from_file.vectors(range(len(view))), from_list.vectors(range(len(listed))))
    queries = [unseen, listed[7], listed[300][:400], "The dog and the cat played in the sun."]
    (cosines, found), (file_cosines, file_found) = from_list.search(queries, k=5), from_file.search(queries, k=5)
    assert np.array_equal(found, file_found) and np.array_equal(cosines, file_cosines)
    assert found[1][0] == 7 and found[2][0] == 300
    generations = [listed[4], unseen]
    by_list = memorization_section(generations, listed, tmp_path / "list", progress=False)
    by_file = memorization_section(generations, view, tmp_path / "file", progress=False)
    assert by_file["records"] == by_list["records"] and by_file["top_pairs"] == by_list["top_pairs"]
    assert by_file["records"][0]["label"] == "exact copy" and by_file["records"][0]["nearest"] == 4


def test_training_stories_of_a_text_file_are_spooled_and_read_back_in_order(stories):
    view = read_stories(paths.TINYSTORIES_TRAIN)  # the default --train-data, found under the data root
    assert isinstance(view, SplitView) and len(view) == 2317
    assert view[:300] == stories and view[2316] == read_documents(paths.TINYSTORIES_TRAIN)[-1]


def test_novelty_bleu_by_hand():
    # Against itself sentence BLEU is 100. Against "the dog ran" only "the" matches (1 of 6 unigrams, clipped) and no
    # longer n-gram: sacrebleu's exp smoothing gives precisions 100/6, 100/(2*5), 100/(4*4), 100/(8*3), geometric
    # mean 8.117, no brevity penalty (6 words > 3).
    hand = (100 + (100 / 6 * 100 / 10 * 100 / 16 * 100 / 24) ** 0.25) / 2 / 100  # reported in [0, 1]
    scores = novelty_bleu(["the cat sat on the mat"], ["the cat sat on the mat", "the dog ran"], sample_size=2)
    assert scores == [pytest.approx(hand, abs=1e-6)]
    assert hand == pytest.approx(0.5406, abs=1e-4)
    assert novelty_bleu(["the cat sat on the mat"], ["a dog ran"]) == [0.0]  # no word in common: sacrebleu gives 0


def test_novelty_is_the_complement_of_novelty_bleu_so_that_higher_is_more_novel():
    assert novelty_figures(0.5406) == {"novelty_bleu": 0.5406, "novelty": 0.4594}
    assert novelty_figures(0.0) == {"novelty_bleu": 0.0, "novelty": 1.0}  # nothing in common with any story


def test_novelty_bleu_of_a_copy_is_high_and_of_an_unseen_story_low(stories, unseen):
    references = stories[:5]
    copied, original = novelty_bleu([stories[2], unseen], references, sample_size=5)
    assert copied > 0.2 > 0.1 > original  # 100 for itself, the four others pull the mean down to about a fifth


def test_memorization_section_counts_copies_templates_and_originals(tmp_path, stories, unseen):
    swapped, _ = swap_name(stories[9])
    section = memorization_section([stories[4], swapped, unseen], stories, tmp_path, top=2, progress=False)
    assert [r["label"] for r in section["records"]] == ["exact copy", "template match", "original"]
    assert section["classification"] == {"exact copy": 1, "template match": 1, "original": 1}
    assert [r["source"] for r in section["records"][:2]] == [4, 9]
    assert section["records"][0]["rouge2_precision"] == 1.0
    assert section["headline"]["nearest_cosine_max"] == pytest.approx(1.0, abs=1e-4)
    headline = section["headline"]
    cosines = [r["cosine"] for r in section["records"]]  # population SD by hand: mean of squared deviations
    mean = sum(cosines) / 3
    assert headline["nearest_cosine_sd"] == pytest.approx((sum((c - mean) ** 2 for c in cosines) / 3) ** 0.5, abs=1e-4)
    assert headline["novelty"] == round(1 - headline["novelty_bleu"], 4) and "| novelty | novelty BLEU |" in \
        section["markdown"]
    assert (tmp_path / "memorization_cosine.png").stat().st_size > 1000
    assert section["charts"] == ["memorization_cosine.png"] and len(section["top_pairs"]) == 2
    assert "| generation | nearest training story |" in section["markdown"]
    json.dumps(section)


def test_bad_inputs_are_one_line_errors(tmp_path, stories):
    with pytest.raises(InputError, match="no training stories"):
        NearestStoryIndex([])
    with pytest.raises(InputError, match="no indexable words"):
        NearestStoryIndex(["the and a", "of it is"])
    with pytest.raises(InputError, match="no generated stories"):
        memorization_section([], stories, tmp_path)


def test_a_tiny_index_with_fewer_terms_than_dense_columns_searches_and_clamps_k():
    stories = ["The red ball rolled down the hill.", "A small bird sang in the tree.", "The dog dug a deep hole."]
    index = NearestStoryIndex(stories, progress=False)
    assert len(index.sparse_columns) == 0  # every term fits in the dense part
    cosines, found = index.search(["The bird sang a song in the big tree.", "ball hill"], k=5)
    assert cosines.shape == (2, 3) and found[:, 0].tolist() == [1, 0]
    # "ball hill" shares 2 of the story's 4 terms (red, ball, rolled, hill; "the" and "down" are stop words), all
    # with the same idf and count: cosine 2 / sqrt(4 * 2).
    assert cosines[1][0] == pytest.approx(2 / np.sqrt(8), abs=1e-6)
