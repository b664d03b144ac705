"""The exact max ROUGE-2 precision over every training story: equal to rouge-score's on real stories, the same on
worker processes as here, and reported with the story that reaches it."""

import numpy as np
import pytest

from talelab import paths
from talelab.data.sources import read_documents
from talelab.evaluate.memorization import memorization_section
from talelab.evaluate.rouge2_search import Generations, max_rouge2_precision, rouge_tokens


@pytest.fixture(scope="module")
def stories(shared) -> list[str]:
    return read_documents(shared / paths.TINYSTORIES_TRAIN, format="eot")[:300]


@pytest.fixture(scope="module")
def generations(shared, stories) -> list[str]:
    """Validation stories, a training story, one cut short, a loop, nothing, no bigram and odd characters."""
    valid = read_documents(shared / paths.TINYSTORIES_VALID, format="blank-line")[1:9]
    return [*valid, stories[3], stories[10][:200], "the dog the dog the dog the dog", "", "Zzz.",
            "Café İstanbul: the KELVIN \u212a sign, don't—stop! 42 ball\udc80s"]


def rouge_score_precisions(generations: list[str], stories: list[str]) -> np.ndarray:
    """(stories, generations): rouge-score's own ROUGE-2 precision of each generation against each story."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge2"], use_stemmer=False)
    return np.array([[scorer.score(story, g)["rouge2"].precision for g in generations] for story in stories])


@pytest.fixture(scope="module")
def expected(generations, stories) -> np.ndarray:
    return rouge_score_precisions(generations, stories)


@pytest.mark.slow
def test_tokens_are_rouge_scores_tokens(stories, generations):
    from rouge_score.tokenizers import DefaultTokenizer

    tokenizer = DefaultTokenizer(use_stemmer=False)
    for text in stories + generations:
        assert rouge_tokens(text) == [t.encode() for t in tokenizer.tokenize(text)]


@pytest.mark.slow
def test_precisions_equal_rouge_scores_on_real_stories(stories, generations, expected):
    assert np.array_equal(Generations.of(generations).precisions(stories), expected)  # bit for bit


@pytest.mark.slow
def test_the_max_and_its_story_are_those_of_rouge_score(stories, generations, expected):
    best, where = max_rouge2_precision(generations, stories, workers=1, batch_stories=64)
    assert np.array_equal(best, expected.max(axis=0))
    first_best = np.where(expected.max(axis=0) > 0, expected.argmax(axis=0), -1)  # the earliest story on a tie
    assert where.tolist() == first_best.tolist()
    assert best[8] == 1.0 and where[8] == 3 and best[9] == 1.0 and where[9] == 10  # the copy and the cut copy
    assert where[11] == where[12] == -1 and best[11] == best[12] == 0.0  # no bigram: precision 0, no story


def test_a_bigram_counts_only_as_often_as_the_story_holds_it():
    # "the dog" 4 times, "dog the" 3 times: 7 bigrams. The story holds "the dog" twice and "dog the" once: 3 / 7.
    best, where = max_rouge2_precision(["the dog the dog the dog the dog"], ["a cat", "The dog, the dog!"],
                                       workers=1)
    assert best[0] == pytest.approx(3 / 7) and where[0] == 1


@pytest.mark.slow
def test_worker_processes_find_what_one_process_finds(stories, generations):
    here = max_rouge2_precision(generations, stories, workers=1, batch_stories=32)
    on_workers = max_rouge2_precision(generations, stories, workers=2, batch_stories=32)  # 10 batches: 2 workers
    assert np.array_equal(here[0], on_workers[0]) and np.array_equal(here[1], on_workers[1])


@pytest.mark.slow
def test_the_section_reports_the_story_of_the_max_in_both_searches(tmp_path, stories, shared):
    unseen = read_documents(shared / paths.TINYSTORIES_VALID, format="blank-line")[5]
    generations = [stories[4], unseen]
    among = memorization_section(generations, stories, tmp_path / "candidates", progress=False)
    exact = memorization_section(generations, stories, tmp_path / "all", progress=False, rouge_search="all")
    assert among["rouge_search"] == "candidates" and exact["rouge_search"] == "all"
    assert among["records"][0]["rouge2_story"] == exact["records"][0]["rouge2_story"] == 4
    assert exact["records"][0]["rouge2_precision"] == 1.0
    expected = rouge_score_precisions([unseen], stories)[:, 0]
    assert exact["records"][1]["rouge2_precision"] == round(expected.max(), 4)
    assert exact["records"][1]["rouge2_story"] == int(expected.argmax())
    assert among["records"][1]["rouge2_precision"] <= exact["records"][1]["rouge2_precision"]  # a subset's max
    assert "over all 300 training stories (exact)" in exact["markdown"]
    assert "TF-IDF nearest stories (not the whole set)" in among["markdown"]
