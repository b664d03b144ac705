"""Batching: requests share forward passes, a request joins a running batch at its next step (continuous batching),
and each keeps its own settings and seed."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse
from urllib.request import urlopen

import openai
import pytest
import torch

from talelab import paths
from talelab.config import ModelConfig, SamplingConfig
from talelab.evaluate.likelihood import reference_pieces, score_documents
from talelab.models import build_model
from talelab.models.storage import load_model
from talelab.serve.batching import Batcher, StoryText, events, held_back, score_prompts

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


class Stream:
    """A streamed stories260K completion read chunk by chunk on its own connection; `close` hangs up, as a client
    that goes away does."""

    def __init__(self, url: str, body: dict):
        self.connection = http.client.HTTPConnection(urlparse(url).netloc, timeout=60)
        self.connection.request("POST", "/v1/completions",
                                json.dumps({"model": "stories260K", **body, "stream": True}).encode(),
                                {"Content-Type": "application/json"})
        self.response = self.connection.getresponse()
        assert self.response.status == 200

    def texts(self) -> Iterator[str]:
        """The story's pieces of text as they arrive."""
        while line := self.response.readline():
            if line.startswith(b"data: {") and (text := json.loads(line[6:])["choices"][0]["text"]):
                yield text

    def close(self) -> None:
        self.connection.close()


def settled(url: str) -> dict:
    """stories260K's counters once no story of it is being written or waiting (earlier tests' included)."""
    deadline = time.monotonic() + 20
    while (counters := stats(url, "stories260K"))["pending"]:
        assert time.monotonic() < deadline, "stories are still being written"
        time.sleep(0.01)
    return counters


def test_a_short_request_joins_a_busy_batch_and_ends_while_the_long_story_goes_on(server):
    before = settled(server)
    long = Stream(server, {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0})
    next(long.texts())  # the long story is being written
    together(server, [{"prompt": "The cat", "max_tokens": 8, "temperature": 0}])
    during = stats(server, "stories260K")
    long.close()
    settled(server)
    assert during["pending"] == 1  # the long story was still being written when the short one came back
    steps, row_steps = during["steps"] - before["steps"], during["row_steps"] - before["row_steps"]
    assert steps < row_steps < 2 * steps  # the short story's steps were the long one's too
    assert during["largest_batch"] >= 2 and during["mean_live_rows"] >= 1


def test_a_seed_gives_the_same_story_alone_and_joining_a_busy_batch_midway(server):
    mine = [{"prompt": "Lily had a", "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 11},
            {"prompt": "Tom and his mom", "max_tokens": 24, "temperature": 0}]
    settled(server)
    alone = [together(server, [request])[0] for request in mine]
    busy = [Stream(server, {"prompt": p, "max_tokens": 400, "temperature": 0}) for p in ("Once upon a time", "The cat")]
    for stream in busy:
        next(stream.texts())
    joined = together(server, mine)
    still_busy = stats(server, "stories260K")["pending"]
    for stream in busy:
        stream.close()
    settled(server)
    assert joined == alone and min(map(len, alone)) > 40
    assert still_busy == 2  # they joined rows that were being written, and left before them


def test_streamed_chunks_of_stories_written_together_interleave(server):
    settled(server)
    order = []  # which story each chunk belonged to, in the order they came

    def read(stream: Stream, name: str, most: int) -> None:
        for count, _ in enumerate(stream.texts(), start=1):
            order.append(name)
            if count == most:
                return

    long = Stream(server, {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0})
    next(long.texts())
    short = Stream(server, {"prompt": "The cat", "max_tokens": 30, "temperature": 0})
    readers = [threading.Thread(target=read, args=(long, "long", 80)), threading.Thread(target=read,
                                                                                      args=(short, "short", 99))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=30)
    long.close()
    short.close()
    settled(server)
    first, last = order.index("short"), len(order) - 1 - order[::-1].index("short")
    assert "long" in order[first:last]  # the long story went on while the short one was written
    assert "long" in order[last:]  # and after it ended


def test_a_client_that_goes_away_frees_its_row(server):
    before = settled(server)
    stream = Stream(server, {"prompt": "Lily had a", "max_tokens": 400, "temperature": 0})
    next(stream.texts())
    stream.close()
    after = settled(server)  # no story pending: the row has ended
    assert after["steps"] - before["steps"] < 100  # the story would have taken 326


@pytest.mark.slow
def test_static_batching_makes_a_request_wait_for_the_running_batch(served):
    with live_server(served, continuous=False) as url:
        long = Stream(url, {"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0})
        next(long.texts())
        together(url, [{"prompt": "The cat", "max_tokens": 8, "temperature": 0}])
        waited = stats(url, "stories260K")
        long.close()
    assert waited["pending"] == 0 and waited["largest_batch"] == 1  # the long story had ended first


def test_a_fault_while_decoding_reaches_every_story_of_the_batch_and_the_worker_goes_on(stories260k):
    model, tokenizer, _ = load_model(stories260k)
    batcher = Batcher("faulty", model, tokenizer, max_batch=4, window_s=0.2)
    passes = 0

    def out_of_memory(*_) -> None:  # as a device fault would, on the third forward pass (the second step)
        nonlocal passes
        passes += 1
        if passes == 3:
            raise RuntimeError("CUDA out of memory")

    async def write(prompts: list[str]) -> list[tuple[str, object]]:
        jobs = batcher.submit([tokenizer.encode(p, bos=True) for p in prompts],
                              [SamplingConfig(temperature=0, max_new_tokens=20)] * len(prompts), [], 0)
        return [(kind, value) async for _, kind, value in events(jobs) if kind != "text"]

    hook = model.register_forward_pre_hook(out_of_memory)
    try:
        failed = asyncio.run(write(["Once upon a time", "The cat"]))
        written = asyncio.run(write(["Lily had a"]))
    finally:
        hook.remove()
        batcher.close()
    assert failed == [("error", "generation failed: CUDA out of memory")] * 2
    assert written[0][0] == "done" and len(written[0][1].tokens) == 20 and batcher.pending == 0


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
