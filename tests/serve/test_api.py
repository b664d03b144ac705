"""The API through the official `openai` client against a live server on loopback, on real models."""

from __future__ import annotations

import json
import math
from urllib.request import urlopen

from talelab.models.storage import load_model
from talelab.serve.app import story_prompt

ONCE = "Once upon a time"


def test_models_lists_every_served_model_by_name(client):
    assert {m.id for m in client.models.list()} == {"tiny", "stories260K"}
    card = client.models.retrieve("stories260K")
    assert card.owned_by == "talelab"
    assert card.model_extra["context_length"] == 512 and card.model_extra["parameters"] == 260_032


def test_greedy_completion_matches_llama2c_output(client, shared):
    reference = (shared / "models/stories260K/greedy-200.txt").read_text()
    answer = client.completions.create(model="stories260K", prompt=ONCE, max_tokens=40, temperature=0)
    choice = answer.choices[0]
    assert reference.startswith(ONCE + choice.text) and len(choice.text) > 100
    assert choice.finish_reason == "length"
    assert answer.usage.completion_tokens == 40 and answer.usage.total_tokens == answer.usage.prompt_tokens + 40


def test_streamed_completion_arrives_in_pieces_that_join_to_the_whole(client):
    whole = client.completions.create(model="stories260K", prompt=ONCE, max_tokens=30, temperature=0).choices[0]
    chunks = list(client.completions.create(model="stories260K", prompt=ONCE, max_tokens=30, temperature=0,
                                            stream=True))
    texts = [c.choices[0].text for c in chunks]
    assert len([t for t in texts if t]) > 10
    assert "".join(texts) == whole.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_continues_the_last_user_message(client):
    plain = client.completions.create(model="stories260K", prompt=ONCE, max_tokens=30, temperature=0)
    messages = [{"role": "system", "content": "You write stories for children."},
                {"role": "user", "content": "Ignored: only the last user message counts."},
                {"role": "assistant", "content": "Fine."},
                {"role": "user", "content": ONCE}]
    chat = client.chat.completions.create(model="stories260K", messages=messages, max_tokens=30, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == plain.choices[0].text
    stream = client.chat.completions.create(model="stories260K", messages=messages, max_tokens=30, temperature=0,
                                            stream=True)
    deltas = [c.choices[0].delta for c in stream]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == plain.choices[0].text


def test_a_seed_fixes_a_sampled_story(client):
    def story(seed):
        return client.completions.create(model="tiny", prompt=ONCE, max_tokens=30, temperature=1.0, seed=seed,
                                         extra_body={"top_k": 50, "repetition_penalty": 1.2}).choices[0].text

    assert story(5) == story(5)
    assert story(5) != story(6)


def test_stop_string_ends_the_story_before_it(client):
    answer = client.completions.create(model="stories260K", prompt=ONCE, max_tokens=60, temperature=0,
                                       stop=[" named", "xyz"])
    assert answer.choices[0].text == ", there was a little girl"
    assert answer.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="stories260K", prompt=ONCE, max_tokens=60, temperature=0, stop=" named",
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed) == ", there was a little girl"


def test_n_stories_per_request_follow_consecutive_seeds(client):
    three = client.completions.create(model="tiny", prompt=ONCE, max_tokens=20, temperature=1.0, seed=1, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    for i, choice in enumerate(three.choices):
        alone = client.completions.create(model="tiny", prompt=ONCE, max_tokens=20, temperature=1.0, seed=1 + i)
        assert choice.text == alone.choices[0].text


def test_logprobs_report_the_top_five_alternatives_of_each_token(client):
    answer = client.completions.create(model="stories260K", prompt=ONCE, max_tokens=12, temperature=0, logprobs=5)
    lp = answer.choices[0].logprobs
    assert "".join(lp.tokens) == answer.choices[0].text and len(lp.tokens) == 12
    assert lp.tokens[:3] == [",", " there", " was"]
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 5
        assert chosen == max(top.values())  # greedy picks the most likely
        assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
    assert lp.text_offset[:3] == [0, 1, 7]
    chat = client.chat.completions.create(model="stories260K", messages=[{"role": "user", "content": ONCE}],
                                          max_tokens=5, temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert [c.token for c in content] == lp.tokens[:5]
    assert all(len(c.top_logprobs) == 3 and c.top_logprobs[0].token == c.token for c in content)


def test_features_enter_the_prompt_in_tinystories_instruct_form(client, stories260k):
    assert story_prompt([], beginning=ONCE) == ONCE
    assert story_prompt(["Dialogue", "Twist"], beginning=ONCE) == "Features: Dialogue, Twist\nStory: Once upon a time"
    _, tokenizer, _ = load_model(stories260k)
    answer = client.completions.create(model="stories260K", prompt=ONCE, max_tokens=5, temperature=0,
                                       extra_body={"features": ["Dialogue", "Twist"]})
    prompt = story_prompt(["Dialogue", "Twist"], beginning=ONCE)
    assert answer.usage.prompt_tokens == len(tokenizer.encode(prompt, bos=True))


def test_health_reports_each_models_batching_counters(server, client):
    client.completions.create(model="stories260K", prompt=ONCE, max_tokens=3)
    health = json.loads(urlopen(f"{server}/health").read())
    assert health["status"] == "ok"
    assert set(health["models"]) == {"tiny", "stories260K"}
    assert health["models"]["stories260K"]["forward_passes"] >= health["models"]["stories260K"]["requests"] > 0
