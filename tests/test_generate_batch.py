"""Batched generation: prompts of different lengths, each row under its own settings, for every model family
(recurrent and compressor models once stopped here: "cannot decode left-padded batches"), and rows that join a
running batch (continuous batching)."""

import pytest
import torch

from talelab.config import ModelConfig, SamplingConfig
from talelab.decoding_batch import DecodingBatch, generate_batch
from talelab.errors import MismatchError
from talelab.generate import generate, pick
from talelab.models import build_model

PROMPTS = [[5, 9, 13], [7], [3, 1, 4, 1, 5, 9, 2, 6], [11, 12]]


def model_with(positions: str, family: str = "transformer"):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, vocab_size=61, d_model=32, n_layers=2, n_heads=4,
                                    context_length=40, positions=positions))
    with torch.no_grad():  # large weights: confident, varied predictions, so mistakes would show
        for p in model.parameters():
            p.mul_(8.0)
    return model.eval()


@pytest.mark.parametrize("family, positions", [("transformer", "rope"), ("transformer", "learned"),
                                               ("transformer", "sinusoidal"), ("rnn", "rope"), ("lstm", "rope"),
                                               ("gru", "rope"), ("compressor", "rope")])
def test_rows_in_a_padded_batch_equal_each_prompt_on_its_own(family, positions):
    model = model_with(positions, family)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    batch = generate_batch(model, PROMPTS, [greedy] * len(PROMPTS), eos_ids=None)
    for prompt, row in zip(PROMPTS, batch):
        assert row.tokens == generate(model, prompt, greedy, eos_id=None)[0]
    sampled = [SamplingConfig(temperature=0.9, top_p=0.9, seed=s, max_new_tokens=10) for s in range(len(PROMPTS))]
    for prompt, config, row in zip(PROMPTS, sampled, generate_batch(model, PROMPTS, sampled, eos_ids=None)):
        assert row.tokens == generate(model, prompt, config, eos_id=None)[0]


def test_a_seeded_request_tells_the_same_story_alone_and_in_any_batch():
    model = model_with("rope")
    mine = SamplingConfig(temperature=0.9, top_k=20, top_p=0.95, seed=5, max_new_tokens=15)
    alone = generate_batch(model, [PROMPTS[0]], [mine], eos_ids=None)[0].tokens
    others = [SamplingConfig(temperature=1.3, seed=s, max_new_tokens=m) for s, m in ((1, 3), (2, 20), (3, 9))]
    together = generate_batch(model, [PROMPTS[2], PROMPTS[0], PROMPTS[1], PROMPTS[3]],
                              [others[0], mine, others[1], others[2]], eos_ids=None)
    assert together[1].tokens == alone
    assert [len(r.tokens) for r in together] == [3, 15, 20, 9]


@pytest.mark.parametrize("settings", [dict(temperature=0.9), dict(temperature=0.8, top_p=0.9),
                                      dict(temperature=1.2, top_k=5), dict(temperature=1.0, top_k=8, top_p=0.7),
                                      dict(temperature=0.7, top_p=0.95, repetition_penalty=1.3)])
def test_single_stream_and_batched_decoding_choose_the_same_tokens_for_a_seed_and_settings(settings):
    """One sampler serves `talelab generate` (one stream) and batched decoding (serve, eval, prefs): a request is
    the same story either way."""
    model = model_with("rope")
    mine = SamplingConfig(seed=11, max_new_tokens=15, **settings)
    other = SamplingConfig(temperature=1.3, top_k=3, seed=2, max_new_tokens=15)
    batch = generate_batch(model, [PROMPTS[2], PROMPTS[0]], [other, mine], eos_ids=None)
    assert batch[1].tokens == generate(model, PROMPTS[0], mine, eos_id=None)[0]


def test_the_nucleus_is_taken_over_the_renormalised_top_k_for_every_row():
    """top_k=2, top_p=0.6 on probabilities 0.5/0.3/0.2: the top two renormalise to 0.625/0.375, so one token is
    left (the two samplers talelab had disagreed here: one kept two)."""
    logits = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]).log()
    config = SamplingConfig(temperature=1.0, top_k=2, top_p=0.6)
    uniforms = torch.tensor([[0.99], [0.99]])  # the top of the distribution: any second token would be chosen
    assert pick(logits, [config], uniforms).tolist() == [0, 2]
    assert pick(logits, [config, SamplingConfig(temperature=1.0)], uniforms).tolist() == [0, 2]  # row 1: no filter


def test_each_row_keeps_its_own_settings():
    model = model_with("rope")
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=10)
    hot = SamplingConfig(temperature=2.0, seed=0, max_new_tokens=10, repetition_penalty=1.5)
    batch = generate_batch(model, [PROMPTS[1], PROMPTS[1]], [greedy, hot], eos_ids=None)
    assert batch[0].tokens == generate(model, PROMPTS[1], greedy, eos_id=None)[0]
    assert batch[1].tokens != batch[0].tokens


def test_callback_streams_every_token_and_can_end_a_row():
    model = model_with("rope")
    seen = {0: [], 1: []}

    def on_token(row, token):
        seen[row].append(token)
        return row == 0 and len(seen[0]) == 4  # row 0 hits its "stop string" after 4 tokens

    batch = generate_batch(model, PROMPTS[:2], [SamplingConfig(temperature=0.0, max_new_tokens=9)] * 2,
                           eos_ids=None, on_token=on_token)
    assert (len(batch[0].tokens), batch[0].finish_reason) == (4, "stop")
    assert (len(batch[1].tokens), batch[1].finish_reason) == (9, "length")
    assert seen == {0: batch[0].tokens, 1: batch[1].tokens}


def test_eos_ends_a_row_and_is_left_out():
    model = model_with("rope")
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    free = generate_batch(model, [PROMPTS[2]], [greedy], eos_ids=None)[0].tokens
    stopped = generate_batch(model, [PROMPTS[2]], [greedy], eos_ids=free[3])[0]
    assert stopped.tokens == free[:free.index(free[3])] and stopped.finish_reason == "stop"


def test_top_alternatives_are_sorted_probabilities_led_by_the_greedy_choice():
    model = model_with("rope")
    row = generate_batch(model, [PROMPTS[0]], [SamplingConfig(temperature=0.0, max_new_tokens=6)], eos_ids=None,
                         top_alternatives=5)[0]
    assert len(row.alternatives) == 6
    for token, alternatives in zip(row.tokens, row.alternatives):
        probs = [p for _, p in alternatives]
        assert alternatives[0][0] == token and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


def test_rows_near_the_end_of_the_context_stop_there_while_others_go_on():
    model = model_with("learned")
    long_prompt = list(range(1, 37))  # 36 of 40 positions
    batch = generate_batch(model, [long_prompt, PROMPTS[1]], [SamplingConfig(temperature=0.0, max_new_tokens=20)] * 2,
                           eos_ids=None)
    assert (len(batch[0].tokens), len(batch[1].tokens)) == (4, 20)
    assert batch[1].tokens == generate(model, PROMPTS[1], SamplingConfig(temperature=0.0, max_new_tokens=20),
                                       eos_id=None)[0]


def alone(model, prompt: list[int], config: SamplingConfig, top_alternatives: int = 0):
    return generate_batch(model, [prompt], [config], eos_ids=None, top_alternatives=top_alternatives)[0]


def test_rows_that_join_a_running_batch_midway_tell_the_story_they_tell_alone():
    """Continuous batching: rows join at later steps, into slots that finished rows freed, and the cache grows for
    a row that reaches further than those before it; each row's tokens equal its run alone. Probabilities agree to
    float rounding only: CPU matmul and attention kernels for one row and for several sum in different orders."""
    model = model_with("rope")
    configs = [SamplingConfig(temperature=0.0, max_new_tokens=4), SamplingConfig(temperature=0.9, seed=3,
                                                                                 max_new_tokens=12),
               SamplingConfig(temperature=1.1, top_k=7, seed=8, max_new_tokens=25),
               SamplingConfig(temperature=0.8, top_p=0.9, repetition_penalty=1.4, seed=1, max_new_tokens=20)]
    batch = DecodingBatch(model, capacity=2)
    joins = {0: [0, 1], 5: [2], 13: [3]}  # step: the prompts that join then (rows 0 and 1 have ended by 13)
    results, slots = {}, {}
    for step in range(40):
        for i in joins.get(step, []):
            slots[batch.admit([PROMPTS[i]], [configs[i]], [None], [3])[0]] = i
        if not batch.live_rows:
            break
        for slot, result in batch.step():
            results[slots.pop(slot)] = result
    assert sorted(results) == [0, 1, 2, 3]
    for i, config in enumerate(configs):
        mine = alone(model, PROMPTS[i], config, top_alternatives=3)
        assert results[i].tokens == mine.tokens
        for got, want in zip(results[i].alternatives, mine.alternatives, strict=True):
            assert [t for t, _ in got] == [t for t, _ in want]
            assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-3)
        assert len(results[i].tokens) == config.max_new_tokens


def test_a_full_batch_refuses_more_rows_and_a_row_with_nothing_to_write_takes_none():
    batch = DecodingBatch(model_with("rope"), capacity=1)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=5)
    assert batch.admit([PROMPTS[0], PROMPTS[1]], [greedy, SamplingConfig(max_new_tokens=0)], [None] * 2,
                       [0, 0]) == [0, None]
    with pytest.raises(MismatchError, match="0 free"):
        batch.admit([PROMPTS[1]], [greedy], [None], [0])


def test_other_families_join_only_an_empty_batch():
    batch = DecodingBatch(model_with("rope", "gru"), capacity=4)
    assert batch.admit(PROMPTS[:2], [SamplingConfig(temperature=0.0, max_new_tokens=3)] * 2, [None] * 2,
                       [0, 0]) == [0, 1]
    assert batch.free_rows == 0  # static batching: the next rows wait until these have ended
    while batch.live_rows:
        batch.step()
    assert batch.free_rows == 4
