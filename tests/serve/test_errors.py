"""Bad requests get the right 4xx with an OpenAI-style JSON error; the server refuses what it was not asked to serve."""

from __future__ import annotations

import openai
import pytest

from talelab.cli import main

from .conftest import error_of, live_server, post

ONCE = "Once upon a time"


def test_malformed_json_is_a_400(server):
    error = error_of(server, b'{"model": "tiny", "prompt": "Once upon')
    assert error["code"] == "invalid_json" and "not valid JSON" in error["message"]


def test_unknown_model_is_a_404_and_paths_are_never_models(server, tiny_run):
    for name in ("gpt-4", str(tiny_run), "../tiny", "tiny/../../etc"):
        error = error_of(server, {"model": name, "prompt": ONCE}, status=404)
        assert error["code"] == "model_not_found" and error["param"] == "model"


def test_max_tokens_over_the_cap_is_a_400(server):
    error = error_of(server, {"model": "tiny", "prompt": ONCE, "max_tokens": 100_000})
    assert error["param"] == "max_tokens" and "limit of 512" in error["message"]


def test_prompt_longer_than_the_context_is_a_400(server):
    error = error_of(server, {"model": "tiny", "prompt": "The dog ran to the big tree. " * 40})
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert "at most 64 tokens" in error["message"]
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "The dog ran. " * 80}]}
    assert error_of(server, chat, path="/v1/chat/completions")["param"] == "messages"


def test_negative_temperature_is_a_400_naming_the_field(server, client):
    error = error_of(server, {"model": "tiny", "prompt": ONCE, "temperature": -0.5})
    assert error["param"] == "temperature" and error["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as raised:
        client.completions.create(model="tiny", prompt=ONCE, temperature=-1)
    assert raised.value.status_code == 400


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny"}, "prompt"),
    ({"model": "tiny", "prompt": 5}, "prompt"),
    ({"model": "tiny", "prompt": ONCE, "top_p": 0}, "top_p"),
    ({"model": "tiny", "prompt": ONCE, "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "prompt": ONCE, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "tiny", "prompt": ONCE, "features": ["Romance"]}, "features.0"),
    ({"model": "tiny", "prompt": ONCE, "n": 99}, "n"),
    ({"model": "tiny", "prompt": "x" * 9000}, "prompt"),
    ([1, 2, 3], None),
])
def test_requests_that_break_the_schema_or_a_limit_are_400s(server, body, param):
    assert error_of(server, body)["param"] == param


def test_chat_without_a_user_message_is_a_400(server):
    body = {"model": "tiny", "messages": [{"role": "system", "content": "Be brief."}]}
    assert error_of(server, body, path="/v1/chat/completions")["param"] == "messages"


def test_oversized_body_is_a_413(server):
    error_of(server, {"model": "tiny", "prompt": "x" * (2 << 20)}, status=413)


def test_unknown_route_is_a_json_404(server):
    assert error_of(server, {}, path="/v1/embeddings", status=404)["type"] == "not_found_error"


def test_more_stories_than_the_concurrency_cap_is_a_429(served):
    with live_server(served, max_concurrent=1) as url:
        assert post(url, "/v1/completions", {"model": "tiny", "prompt": ONCE, "max_tokens": 4})[0] == 200
        error = error_of(url, {"model": "tiny", "prompt": ONCE, "max_tokens": 4, "n": 2}, status=429)
        assert error["type"] == "rate_limit_error"


def test_serve_without_a_model_or_with_a_bad_name_is_a_one_line_error(capsys, tiny_run):
    assert main(["serve"]) == 2
    assert "--model NAME=PATH" in capsys.readouterr().err
    assert main(["serve", "--model", f"my model={tiny_run}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "letters, digits" in err
