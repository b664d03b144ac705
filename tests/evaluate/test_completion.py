"""The completion protocol: which held-out texts it reads (the first, or a reproducible random draw streamed over
the source), and its figures: ROUGE and TF-IDF cosine, each with mean and standard deviation."""

import json
import math
import random
from collections import Counter

import pytest

from talelab import paths
from talelab.config import SamplingConfig
from talelab.data.sources import read_documents
from talelab.errors import ConfigError
from talelab.evaluate.completion import (COMPLETION_METRICS, completer, completion_section, held_out_texts,
                                         mean_and_sd, reservoir_sample)
from talelab.evaluate.overlap import rouge, tfidf_cosines

PAIRS = [("the cat sat", "the cat ran"), ("a dog ran", "a dog ran")]  # (generated ending, true ending)


def test_tfidf_cosine_of_two_pairs_by_hand():
    # Fitted on the four texts; scikit-learn's words have 2+ characters, so "a" is no word. Document frequencies
    # (of 4): the 2, cat 2, dog 2, ran 3, sat 1; smoothed idf = ln((1 + 4) / (1 + df)) + 1.
    idf = {df: math.log(5 / (1 + df)) + 1 for df in (1, 2, 3)}
    the = cat = idf[2]
    sat, ran = idf[1], idf[3]
    # pair 1 shares "the" and "cat": (the, cat, sat) . (the, cat, ran) over the two lengths
    first = (the**2 + cat**2) / math.sqrt((the**2 + cat**2 + sat**2) * (the**2 + cat**2 + ran**2))
    assert first == pytest.approx(0.64608, abs=1e-5)
    cosines = tfidf_cosines([g for g, _ in PAIRS], [t for _, t in PAIRS])
    assert cosines == [pytest.approx(first, abs=1e-12), pytest.approx(1.0, abs=1e-12)]  # pair 2: the same text


def test_mean_and_population_sd_of_two_pairs_by_hand():
    cosines = tfidf_cosines([g for g, _ in PAIRS], [t for _, t in PAIRS])
    scores = [{**rouge(g, t), "tfidf_cosine": c} for (g, t), c in zip(PAIRS, cosines)]
    figures = mean_and_sd(scores, COMPLETION_METRICS)
    # ROUGE-1 F1: 2 of 3 words in common (2/3), then all (1): mean 5/6, SD |1 - 2/3| / 2 = 1/6 (two values: half
    # their distance). ROUGE-2: "the cat" of 2 bigrams (1/2), then 1: mean 3/4, SD 1/4.
    assert figures["rouge1_mean"] == pytest.approx(5 / 6) and figures["rouge1_sd"] == pytest.approx(1 / 6)
    assert figures["rouge2_mean"] == pytest.approx(3 / 4) and figures["rouge2_sd"] == pytest.approx(1 / 4)
    assert figures["tfidf_cosine_mean"] == pytest.approx((0.64608 + 1) / 2, abs=1e-5)
    assert figures["tfidf_cosine_sd"] == pytest.approx((1 - 0.64608) / 2, abs=1e-5)


def test_texts_without_any_word_have_cosine_0():
    assert tfidf_cosines(["!", "a"], ["?", "b"]) == [0.0, 0.0]
    assert tfidf_cosines(["the cat", "?"], ["the cat", "the dog"]) == [pytest.approx(1.0), 0.0]


def test_reservoir_sampling_is_uniform_reproducible_and_in_source_order():
    counts = Counter()
    for seed in range(2000):
        drawn = reservoir_sample(iter(range(10)), 3, random.Random(seed))
        assert drawn == sorted(drawn) and len(set(drawn)) == 3
        counts.update(drawn)
    # each item is kept with probability 3/10: 600 of 2000 draws, binomial SD about 20
    assert all(520 < counts[i] < 680 for i in range(10)), counts
    assert reservoir_sample(range(100), 5, random.Random(7)) == reservoir_sample(range(100), 5, random.Random(7))
    assert reservoir_sample(range(4), 10, random.Random(0)) == [0, 1, 2, 3]  # fewer than asked: all of them


def test_random_held_out_texts_are_a_seeded_draw_from_the_whole_file(shared):
    source = paths.TINYSTORIES_TRAIN  # 2,317 stories; the draw reads them all, the first ones only the start
    every = [t for t in read_documents(shared / source) if len(t.split()) >= 40]
    first = held_out_texts(source, 8, 40, sample="first")
    drawn = held_out_texts(source, 8, 40, sample="random", seed=3)
    assert first == every[:8]
    assert drawn == held_out_texts(source, 8, 40, sample="random", seed=3) != first
    assert drawn != held_out_texts(source, 8, 40, sample="random", seed=4)
    positions = [every.index(t) for t in drawn]
    assert positions == sorted(positions) and positions[-1] > 1000  # from all over the file, in its order


def test_random_held_out_texts_read_a_prepared_directory_and_its_training_split(prepared):
    val = held_out_texts(str(prepared), 3, 20, sample="random", seed=1)
    train = held_out_texts(str(prepared / "train.jsonl"), 3, 20, sample="random", seed=1)
    assert len(val) == len(train) == 3
    assert set(val) <= set(read_documents(prepared / "val.jsonl"))
    assert set(train) <= set(read_documents(prepared / "train.jsonl"))


def test_an_unknown_sample_is_refused():
    with pytest.raises(ConfigError, match="--completion-sample 'some'"):
        held_out_texts(paths.TINYSTORIES_VALID, 2, 40, sample="some")


def test_the_section_reports_each_mean_with_its_sd_and_the_cosine(stories260k, tmp_path):
    from talelab.models.storage import load_model

    model, tokenizer, _ = load_model(stories260k)
    complete = completer(model, tokenizer, SamplingConfig(max_new_tokens=40, temperature=0.0))
    texts = held_out_texts(paths.TINYSTORIES_VALID, 3, 40, sample="random", seed=0)
    section = completion_section(complete, texts, 0.4, "words", tmp_path)
    items = section["items"]
    assert section["headline"] == mean_and_sd(items, COMPLETION_METRICS)
    assert section["headline"].keys() == {f"{n}_{f}" for n in COMPLETION_METRICS for f in ("mean", "sd")}
    assert all(0.0 <= item["tfidf_cosine"] <= 1.0 + 1e-9 for item in items)
    assert [i["tfidf_cosine"] for i in items] == tfidf_cosines([i["generated"] for i in items],
                                                               [i["true_ending"] for i in items])
    assert "| metric | mean | SD | median |" in section["markdown"] and "| TF-IDF cosine |" in section["markdown"]
    json.dumps(section)
