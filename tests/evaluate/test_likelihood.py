import math

import pytest
import torch

from talelab.config import ModelConfig
from talelab.evaluate.likelihood import reference_pieces, score_documents, windows_of
from talelab.models.transformer import Transformer
from talelab.tokenizer import load_tokenizer
from talelab.train.metrics import mean_perplexity


def uniform_model(vocab_size: int, context: int = 64) -> Transformer:
    """All weights zero: every next-token distribution is uniform, so the loss is ln(vocab) per token."""
    model = Transformer(ModelConfig(vocab_size=vocab_size, d_model=16, n_layers=1, n_heads=2, context_length=context))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval()


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_times_tokens_over_bytes(bpe_dir):
    tokenizer = load_tokenizer(bpe_dir)
    docs = ["Tom had a red ball.", "The cat sat on the mat and looked at the sun. It was warm."]
    result = score_documents(uniform_model(tokenizer.vocab_size), tokenizer, docs)
    tokens = sum(len(tokenizer.encode(d)) for d in docs)  # every token after the BOS is scored
    num_bytes = sum(len(d.encode()) for d in docs)
    assert result["tokens"] == tokens and result["bytes"] == num_bytes
    assert result["loss"] == pytest.approx(math.log(tokenizer.vocab_size))
    assert result["bits_per_byte"] == pytest.approx(tokens * math.log2(tokenizer.vocab_size) / num_bytes)
    assert result["perplexity"] == pytest.approx(tokenizer.vocab_size)


def test_documents_longer_than_the_context_are_scored_token_by_token_once(bpe_dir):
    tokenizer = load_tokenizer(bpe_dir)
    long_story = " ".join(["Lily and Ben played in the big green park all day long."] * 20)
    model = uniform_model(tokenizer.vocab_size, context=32)
    result = score_documents(model, tokenizer, [long_story])
    assert result["tokens"] == len(tokenizer.encode(long_story))


@pytest.mark.parametrize("length,context", [(5, 8), (9, 8), (10, 8), (40, 8), (41, 9)])
def test_windows_cover_every_target_exactly_once_within_the_context(length, context):
    ids = list(range(length))
    covered = []
    for window, first in windows_of(ids, context):
        assert len(window) <= context + 1
        covered += window[1 + first:]
    assert covered == ids[1:]


def test_reference_pieces_follow_the_protocol(shared):
    pieces = reference_pieces(shared / "data/tinystories/valid-head.txt")
    assert len(pieces) == 300
    assert sum(len(p.encode()) for p in pieces) == 62046
    assert all(p == p.strip() and p for p in pieces)


def test_word_level_scores_count_unknown_words_and_say_the_figure_is_a_lower_bound(prepared, tmp_path):
    from talelab.config import TokenizerConfig
    from talelab.tokenizer import train_tokenizer_from

    words = train_tokenizer_from(TokenizerConfig(data=str(prepared), out=str(tmp_path / "w"), kind="words",
                                                 vocab_size=200))
    result = score_documents(uniform_model(words.vocab_size), words, ["The zyzzyva sat with Lily."])
    assert result["unknown_tokens"] >= 1 and "lower bound" in result["note"]


def test_mean_perplexity_weighs_every_text_the_same_where_exp_of_the_mean_loss_weighs_every_token():
    # text A: 2 tokens, NLL 2 ln 2 (loss ln 2, perplexity 2); text B: 1 token, NLL ln 8 (perplexity 8); C: no token
    nll, tokens = [2 * math.log(2), math.log(8), 0.0], [2, 1, 0]
    assert mean_perplexity(nll, tokens) == pytest.approx((2 + 8) / 2)  # 5
    assert math.exp(sum(nll) / sum(tokens)) == pytest.approx(2 ** (5 / 3))  # 3.1748: exp(5 ln 2 / 3)
    assert math.isnan(mean_perplexity([], []))


def test_mean_document_perplexity_is_the_mean_of_each_documents_own_perplexity(stories260k):
    from talelab.models.storage import load_model

    model, tokenizer, _ = load_model(stories260k)
    model.config.context_length = 24  # the long story is scored in several windows: they add up to its own figure
    docs = ["Tom had a red ball. He liked to throw it high in the sky and catch it with both hands every day.",
            "Lily saw a cat.", "The sun was hot. Ben and his dog went to the lake to swim and play in the water."]
    together = score_documents(model, tokenizer, docs, batch_size=2)
    alone = [score_documents(model, tokenizer, [d]) for d in docs]
    assert together["mean_document_perplexity"] == pytest.approx(sum(a["perplexity"] for a in alone) / 3, rel=1e-5)
    assert together["perplexity"] == pytest.approx(
        math.exp(sum(a["nll_nats"] for a in alone) / sum(a["tokens"] for a in alone)), rel=1e-5)
    assert together["mean_document_perplexity"] != pytest.approx(together["perplexity"], rel=1e-3)
