"""Batching: requests that arrive together share forward passes, and each keeps its own settings and seed."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from urllib.request import urlopen

import openai
import pytest
import torch

from talelab import paths
from talelab.config import ModelConfig
from talelab.evaluate.likelihood import reference_pieces, score_documents
from talelab.models import build_model
from talelab.models.storage import load_model
from talelab.serve.batching import StoryText, held_back, score_prompts

from .conftest import live_server

# different lengths, so that the batch is left-padded
PROMPTS = ["Once upon a time", "The cat", "Tom and his mom went to the park to", "Lily had a"]


def stats(url: str, model: str) -> dict:
    return json.loads(urlopen(f"{url}/health").read())["models"][model]


def together(url: str, requests: list[dict]) -> list[str]:
    """Send every request at once, each from its own thread; their texts in order."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = pool.map(lambda r: client.completions.create(model="stories260K", **r), requests)
        return [a.choices[0].text for a in answers]


@pytest.mark.slow
def test_requests_arriving_together_share_forward_passes(served):
    requests = [{"prompt": p, "max_tokens": 24, "temperature": 0} for p in PROMPTS]
    passes, texts = {}, {}
    for batching in (True, False):
        # a long window makes the four requests one batch however the threads are scheduled
        with live_server(served, batching=batching, batch_window_ms=500) as url:
            texts[batching] = together(url, requests)
            counters = stats(url, "stories260K")
            passes[batching] = counters["forward_passes"]
            assert counters["largest_batch"] == (4 if batching else 1)
    assert texts[True] == texts[False]  # greedy stories do not depend on their batch mates
    assert passes[True] <= 24 < 3 * 24 <= passes[False]


@pytest.mark.slow
def test_a_seed_gives_the_same_story_alone_and_in_a_batch(served):
    mine = {"prompt": "Lily had a", "max_tokens": 30, "temperature": 0.9, "top_p": 0.95, "seed": 11}
    others = [{"prompt": p, "max_tokens": 30, "temperature": t, "seed": s, "extra_body": {"top_k": k}}
              for p, t, s, k in [("Once upon a time", 1.2, 3, 0), ("The cat", 0.0, 0, 0), ("Tom and", 0.7, 5, 10)]]
    with live_server(served, batch_window_ms=500) as url:
        alone = together(url, [mine])[0]
        assert stats(url, "stories260K")["largest_batch"] == 1
        in_batch = together(url, [mine, *others])[0]
        assert stats(url, "stories260K")["largest_batch"] == 4
    assert in_batch == alone and len(alone) > 40


@pytest.fixture(scope="module")
def tokenizer(stories260k):
    return load_model(stories260k)[1]


def continuation(tokenizer, prompt: str, rest: str) -> tuple[list[int], list[int]]:
    """The ids of `prompt` (after bos) and of `rest` as the model would write them after it."""
    ids, whole = tokenizer.encode(prompt, bos=True), tokenizer.encode(prompt + rest, bos=True)
    assert whole[:len(ids)] == ids
    return ids, whole[len(ids):]


def test_a_stop_string_is_never_sent_even_when_it_spans_tokens(tokenizer):
    prompt, story = continuation(tokenizer, "Once upon a time", ", there was a little girl named Lily. She smiled.")
    text = StoryText(tokenizer, prompt, stop=[" named Li", "zzz"])
    sent = []
    for token in story:
        sent.append(text.push(token))
        if text.stopped:
            break
    assert "".join(sent) == ", there was a little girl" and text.stopped
    assert " na" not in "".join(sent) and text.finish() == ""


def test_held_back_text_is_sent_when_the_stop_string_does_not_follow(tokenizer):
    prompt, story = continuation(tokenizer, "Once upon a time", ", there was a little girl named")
    text = StoryText(tokenizer, prompt, stop=[" named Bob"])
    sent = "".join(text.push(t) for t in story)
    assert sent == ", there was a little girl"  # " named" might still become " named Bob"
    assert text.finish() == " named" and not text.stopped


def test_held_back_counts_the_longest_suffix_that_starts_a_stop_string():
    assert held_back("The end. The", ["The end", "."]) == 3
    assert held_back("She said", ["said it", "aid!"]) == 4
    assert held_back("nothing", ["xyz"]) == 0


@pytest.mark.parametrize("family", ["transformer", "gru", "compressor"])
def test_scored_prompts_sum_to_the_nll_that_eval_loss_reports_for_every_family(tokenizer, shared, family):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, vocab_size=tokenizer.vocab_size, d_model=32, n_layers=2,
                                    n_heads=2, context_length=256)).eval()
    stories = reference_pieces(shared / paths.TINYSTORIES_VALID)[:3]  # of different lengths: a right-padded batch
    prompts = tokenizer.encode_batch(stories, bos=True)
    scored = score_prompts(model, tokenizer, prompts, top=2)
    assert [s.logprobs[0] for s in scored] == [None] * 3
    assert ["".join(s.pieces) for s in scored] == stories
    nll = -sum(sum(s.logprobs[1:]) for s in scored)
    assert nll == pytest.approx(score_documents(model, tokenizer, stories)["nll_nats"], rel=1e-5)
    for ids, s in zip(prompts, scored):  # a token among the alternatives has there exactly its own logprob
        for token, chosen, top in zip(ids[1:], s.logprobs[1:], s.alternatives[1:]):
            assert len(top) == 2 and chosen <= top[0][2]
            assert all(value == chosen for i, _, value in top if i == token)
