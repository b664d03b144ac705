"""The completions forms evaluation harnesses send: prompt lists, token ids, echo with the prompt's logprobs, scoring
without writing (max_tokens 0), a usage chunk at the end of a stream; and strictness about everything else."""

from __future__ import annotations

import pytest
import torch

from talelab import paths
from talelab.evaluate.likelihood import reference_pieces
from talelab.models.storage import load_model

from .conftest import error_of

ONCE = "Once upon a time"


@pytest.fixture(scope="module")
def stories260k_model(stories260k):
    model, tokenizer, _ = load_model(stories260k)
    return model.eval(), tokenizer


def own_logprobs(model, ids: list[int]) -> list[float]:
    """Each token's log-probability given those before it, from the model's own forward pass and log-softmax."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    return logits[0].log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()


def greedy(client, prompt, **options):
    return client.completions.create(model="stories260K", prompt=prompt, temperature=0, **options)


def test_a_list_of_prompts_gets_n_choices_each_numbered_prompt_by_prompt(client):
    answer = greedy(client, [ONCE, "The cat"], max_tokens=6, n=2)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    alone = [greedy(client, p, max_tokens=6) for p in (ONCE, "The cat")]
    assert [c.text for c in answer.choices] == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2
    assert answer.usage.prompt_tokens == alone[0].usage.prompt_tokens + alone[1].usage.prompt_tokens
    assert answer.usage.completion_tokens == 4 * 6


def test_token_id_prompts_are_read_as_given(client, stories260k_model):
    _, tokenizer = stories260k_model
    text = greedy(client, ONCE, max_tokens=8).choices[0].text
    ids = tokenizer.encode(ONCE, bos=True)
    assert greedy(client, ids, max_tokens=8).choices[0].text == text
    cat = tokenizer.encode("The cat", bos=True)
    both = greedy(client, [ids, cat], max_tokens=8)
    assert [c.text for c in both.choices] == [text, greedy(client, "The cat", max_tokens=8).choices[0].text]
    assert both.usage.prompt_tokens == len(ids) + len(cat)


def test_echo_scores_the_prompt_with_the_models_own_log_softmax(client, stories260k_model):
    model, tokenizer = stories260k_model
    ids = tokenizer.encode(ONCE, bos=True)
    answer = greedy(client, ONCE, max_tokens=0, echo=True, logprobs=2)
    choice = answer.choices[0]
    assert choice.text == ONCE and choice.finish_reason == "length"
    assert answer.usage.prompt_tokens == len(ids) and answer.usage.completion_tokens == 0
    lp = choice.logprobs
    assert lp.tokens == ["", "Once", " upon", " a", " time"]  # BOS first: given, not predicted, so no logprob
    assert lp.text_offset == [0, 0, 4, 9, 11]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(own_logprobs(model, ids), abs=1e-5)
    for token, chosen, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:]):
        # each word of the story's opening is the model's first choice, with exactly its own logprob: a harness's
        # is-greedy test compares the two
        assert len(top) == 2 and top[token] == chosen == max(top.values())


def test_echo_puts_the_prompt_before_the_story_and_its_tokens_before_the_storys(client, stories260k_model):
    model, tokenizer = stories260k_model
    plain = greedy(client, ONCE, max_tokens=5, logprobs=1).choices[0]
    echoed = greedy(client, ONCE, max_tokens=5, logprobs=1, echo=True).choices[0]
    assert echoed.text == ONCE + plain.text
    prompt_length = len(tokenizer.encode(ONCE, bos=True))
    assert echoed.logprobs.tokens == ["", "Once", " upon", " a", " time"] + plain.logprobs.tokens
    assert echoed.logprobs.token_logprobs[prompt_length:] == plain.logprobs.token_logprobs
    assert echoed.logprobs.text_offset[prompt_length:] == [len(ONCE) + o for o in plain.logprobs.text_offset]
    streamed = list(client.completions.create(model="stories260K", prompt=ONCE, max_tokens=5, temperature=0,
                                              echo=True, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == echoed.text


def test_one_token_after_an_ended_story_is_its_end_so_the_logprobs_run_one_past_the_prompt(client, shared,
                                                                                         stories260k_model):
    # lm-evaluation-harness reads the prompt's logprobs as all but the last: the written token must be there even
    # when it is the end of the story (stories260K ends this valid story there)
    model, tokenizer = stories260k_model
    story = reference_pieces(shared / paths.TINYSTORIES_VALID)[4]
    ids = tokenizer.encode(story, bos=True)
    choice = greedy(client, [ids], max_tokens=1, echo=True, logprobs=1).choices[0]
    assert choice.finish_reason == "stop" and choice.text == story
    assert len(choice.logprobs.token_logprobs) == len(ids) + 1 and choice.logprobs.tokens[-1] == ""
    assert choice.logprobs.token_logprobs[1:-1] == pytest.approx(own_logprobs(model, ids), abs=1e-5)


def test_include_usage_ends_a_stream_with_a_usage_chunk(server, client):
    chunks = list(client.completions.create(model="stories260K", prompt=[ONCE, "The cat"], max_tokens=4,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.choices[0].index for c in chunks[:-1]} == {0, 1}
    error = error_of(server, {"model": "stories260K", "prompt": ONCE, "stream_options": {"include_usage": True}})
    assert error["param"] == "stream_options" and "stream=true" in error["message"]


@pytest.mark.parametrize("field, value", [("logit_bias", {"50": 5}), ("presence_penalty", 0.5),
                                          ("frequency_penalty", 1.0), ("suffix", "The end."), ("best_of", 3),
                                          ("logprobs_offset", 1)])
def test_a_field_talelab_does_not_implement_is_a_400_naming_it(server, field, value):
    error = error_of(server, {"model": "stories260K", "prompt": ONCE, field: value})
    assert error["param"] == field and field in error["message"]


def test_openai_fields_at_their_neutral_value_change_nothing(server, client):
    neutral = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "best_of": 1, "user": "me"}
    answer = greedy(client, ONCE, max_tokens=5, extra_body=neutral)
    assert answer.choices[0].text == greedy(client, ONCE, max_tokens=5).choices[0].text
    chat = {"model": "stories260K", "messages": [{"role": "user", "content": ONCE, "audio": None}]}
    assert error_of(server, chat, path="/v1/chat/completions")["param"] == "messages.0.audio"


def test_max_tokens_zero_without_echo_is_a_400(server):
    error = error_of(server, {"model": "stories260K", "prompt": ONCE, "max_tokens": 0})
    assert error["param"] == "max_tokens" and "echo" in error["message"]


@pytest.mark.parametrize("body, param, path", [
    (b'{"model": "stories260K", "prompt": "Once \\ud800"}', "prompt", "/v1/completions"),
    (b'{"model": "stories260K", "prompt": ["Once", "\\udfff"]}', "prompt", "/v1/completions"),
    (b'{"model": "stories260K", "prompt": "Once", "stop": ["\\ud83d"]}', "stop", "/v1/completions"),
    (b'{"model": "\\ud800", "prompt": "Once"}', "model", "/v1/completions"),
    (b'{"model": "stories260K", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages",
     "/v1/chat/completions"),
])
def test_a_lone_surrogate_is_a_400_naming_its_field(server, body, param, path):
    error = error_of(server, body, path=path)
    assert error["param"] == param and "surrogate" in error["message"]


def test_bad_prompt_forms_are_400s(server):
    for prompt in ([], [[]], [1, "a"], [-1], [True]):
        assert error_of(server, {"model": "stories260K", "prompt": prompt})["param"] == "prompt"
    error = error_of(server, {"model": "stories260K", "prompt": [1, 100_000]})
    assert error["param"] == "prompt" and "vocabulary of 512" in error["message"]
    error = error_of(server, {"model": "stories260K", "prompt": [1, 5], "features": ["Dialogue"]})
    assert error["param"] == "features"
