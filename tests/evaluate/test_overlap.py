"""Overlap metrics against values worked out by hand on small fixed texts."""

import math

import pytest

from talelab.evaluate.completion import continuation_text, cut, fit_prompt
from talelab.evaluate.overlap import bleu, distinct_n, diversity, max_rouge2_to_others, rouge, self_bleu, words


def test_distinct_n_of_a_six_word_text_by_hand():
    text = "The cat saw the cat run."  # the cat saw the cat run: 6 words, 4 different
    assert words(text) == ["the", "cat", "saw", "the", "cat", "run"]
    assert distinct_n([text], 1) == pytest.approx(4 / 6)
    assert distinct_n([text], 2) == pytest.approx(4 / 5)  # "the cat" twice among 5 bigrams
    assert distinct_n([text], 3) == pytest.approx(4 / 4)


def test_distinct_n_pools_texts_but_never_joins_them():
    assert distinct_n(["red ball", "red ball"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["red ball", "red ball"], 2) == pytest.approx(1 / 2)
    assert distinct_n(["red ball", "blue kite"], 2) == 1.0  # no "ball blue" across the boundary
    assert distinct_n(["one"], 2) == 0.0


def test_rouge_of_two_short_strings_by_hand():
    scores = rouge("the cat sat on the mat", "the cat lay on a mat")
    # unigrams in common (clipped): the, cat, on, mat = 4 of 6 each side -> F1 2/3
    assert scores["rouge1"] == pytest.approx(2 / 3)
    # bigrams: only "the cat" of 5 each side -> 1/5
    assert scores["rouge2"] == pytest.approx(1 / 5)
    assert scores["rouge2_precision"] == pytest.approx(1 / 5) and scores["rouge2_recall"] == pytest.approx(1 / 5)
    # longest common subsequence: the cat on mat = 4 -> 2/3
    assert scores["rougeL"] == pytest.approx(2 / 3)


def test_rouge_ignores_case_and_punctuation_with_its_own_tokenizer():
    assert rouge("The CAT, sat!", "the cat sat")["rouge2"] == pytest.approx(1.0)


def test_rouge2_precision_and_recall_follow_the_argument_order():
    scores = rouge("red ball", "the red ball rolled")  # 1 shared bigram: 1 of 1 generated, 1 of 3 true
    assert scores["rouge2_precision"] == pytest.approx(1.0) and scores["rouge2_recall"] == pytest.approx(1 / 3)


def test_bleu_by_hand_without_smoothing():
    # 1-4 gram precisions 5/6, 3/5, 2/4, 1/3 (the second "the" finds no partner); equal lengths: no brevity penalty
    assert bleu("the cat sat on a mat", ["the cat sat on the mat"]) == pytest.approx((1 / 12) ** 0.25)


def test_bleu_by_hand_with_exp_smoothing_of_a_zero_precision():
    # precisions 4/6, 2/5, 1/4 and 0/3 -> exp smoothing replaces the zero by 1 / (2 * 3)
    assert bleu("the cat sat on a mat", ["the cat sat under the mat"]) == pytest.approx((1 / 90) ** 0.25)


def test_bleu_by_hand_with_brevity_penalty_and_effective_order():
    # every 1-3 gram matches, no 4-grams exist; 3 words against 6: brevity penalty exp(1 - 6/3)
    assert bleu("the cat sat", ["the cat sat on the mat"]) == pytest.approx(math.exp(-1))


def test_self_bleu_is_one_for_identical_generations_and_zero_for_disjoint_ones():
    assert self_bleu(["Lily saw a big red ball in the park."] * 4) == pytest.approx(1.0)
    assert self_bleu(["Lily ran home quickly", "The dog barked loudly", "Snow fell over hills"]) == 0.0


def test_self_bleu_of_two_texts_averages_both_directions():
    # each direction has precisions 5/6, 3/5, 2/4, 1/3 (see test_bleu_by_hand_without_smoothing)
    assert self_bleu(["the cat sat on a mat", "the cat sat on the mat"]) == pytest.approx((1 / 12) ** 0.25)


def test_max_rouge2_to_others_by_hand():
    texts = ["red ball rolls", "red ball stops", "snow fell down"]  # only "red ball" is shared: F1 1/2
    assert max_rouge2_to_others(texts) == pytest.approx([0.5, 0.5, 0.0])


def test_diversity_collects_every_figure():
    result = diversity(["red ball rolls", "red ball stops", "snow fell down"])
    assert result["max_rouge2_to_others_mean"] == pytest.approx(1 / 3)
    assert result["distinct_1"] == pytest.approx(7 / 9) and result["texts"] == 3


def test_cut_by_words_keeps_the_text_whole():
    text = "One two three four five six seven eight nine ten."
    beginning, ending = cut(text, 0.4, "words")
    assert beginning == "One two three four" and beginning + ending == text


def test_cut_by_sentences():
    text = "Tom ran. He fell. Mom came. She helped him. They smiled."
    beginning, ending = cut(text, 0.4, "sentences")
    assert beginning == "Tom ran. He fell." and ending == " Mom came. She helped him. They smiled."


def test_fit_prompt_keeps_the_beginning_token_and_room_to_write():
    ids = [1, *range(100, 200)]
    fitted = fit_prompt(ids, context=64, max_new_tokens=200)
    assert fitted[0] == 1 and len(fitted) == 32 and fitted[-1] == 199
    assert fit_prompt(ids[:10], context=64, max_new_tokens=200) == ids[:10]


def test_continuation_text_keeps_the_space_after_the_prompt(stories260k):
    from talelab.models.storage import load_model

    _, tokenizer, _ = load_model(stories260k)
    prompt = tokenizer.encode("Once upon a time", bos=True)
    new = tokenizer.encode("Once upon a time there was a dog")[len(prompt) - 1:]
    assert continuation_text(tokenizer, prompt, new) == " there was a dog"


def test_fast_self_bleu_and_similarity_equal_their_pair_by_pair_definitions(shared):
    from talelab.evaluate.overlap import rouge_scorer

    text = (shared / "data/tinystories/train-head.txt").read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>")][:10]
    texts = stories + [stories[0], "Tom ran.", stories[3][:200]]  # a duplicate, a short one, a prefix
    naive = sum(bleu(t, texts[:i] + texts[i + 1:]) for i, t in enumerate(texts)) / len(texts)
    assert self_bleu(texts) == pytest.approx(naive, abs=1e-12)
    scorer = rouge_scorer(("rouge2",))
    pairwise = [max(scorer.score(a, b)["rouge2"].fmeasure for j, b in enumerate(texts) if j != i)
                for i, a in enumerate(texts)]
    assert max_rouge2_to_others(texts) == pytest.approx(pairwise, abs=1e-12)
