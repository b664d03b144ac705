"""The LLM judge over real HTTP on loopback.

Two servers: `talelab serve` with stories260K (a story model: it answers a judge's request with story text, never
JSON, so the judge must retry and then fail naming the endpoint), and a scripted judge written here (FastAPI +
uvicorn, OpenAI's chat-completions shape) whose replies per story are fixed, so that parsing, retries, the
t-intervals and Spearman's rho can be checked against values computed by hand.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from talelab.config import JudgeConfig, ServeConfig
from talelab.errors import ConfigError
from talelab.evaluate.judge import JudgeError, judge_section, load_rubric, parse_reply
from talelab.serve.app import create_app, load_models

from ..serve.conftest import live_app

CATEGORIES = ("grammar", "spelling", "consistency", "plot", "creativity", "style")


def scores(grammar, plot=5, **others) -> str:
    return json.dumps({"grammar": grammar, "spelling": 9, "consistency": 5, "plot": plot, "creativity": 4,
                       "style": 6, **others})


def scripted_judge(script: dict[str, list[str | None]]):
    """A chat-completions endpoint that answers each story (the last user message) with its next scripted reply
    (None: a JSON body of another shape); model 'locked' answers 401 as a real API does without a valid key."""
    app = FastAPI()
    app.state.requests = []
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests.append(body)
        if body["model"] == "locked":
            return JSONResponse({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                           "param": None, "code": "invalid_api_key"}}, 401)
        story = body["messages"][-1]["content"].removeprefix("Story:\n")
        with lock:
            reply = script[story].pop(0)
        if reply is None:  # a body that is JSON but no chat completion
            return {"result": "ok"}
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


def test_replies_must_be_one_json_object_scoring_every_category_1_to_10():
    rubric = load_rubric()
    assert tuple(rubric) == CATEGORIES
    assert parse_reply(scores(7), rubric)["grammar"] == 7
    assert parse_reply(f"```json\n{scores(7)}\n```", rubric)["grammar"] == 7
    for junk, why in [("Once upon a time", "not JSON"), (scores(7.5), "integer"), (scores(11), "integer"),
                      (scores(True), "integer"), (json.dumps({"grammar": 7}), "missing"),
                      (scores(7, mood=3), "unknown"), (f"Scores: {scores(7)}", "not JSON"), ("[1, 2]", "object")]:
        with pytest.raises(ValueError, match=why):
            parse_reply(junk, rubric)


def test_means_and_t_intervals_over_stories_after_retrying_junk(tmp_path):
    script = {  # two samples per story; junk is retried and never counted
        "A": ["I would say the grammar is fine.", scores(6), scores(6, plot=3)],
        "B": [scores(7), None, scores(7.5), "```json\n" + scores(7) + "\n```"],
        "C": [scores(8, plot=4), scores(10, plot=4)],
    }
    with live_app(scripted_judge(script)) as url:
        config = JudgeConfig(base_url=f"{url}/v1", model="scripted", samples=2, retries=2, workers=2)
        result = judge_section(["A", "B", "C"], config, tmp_path, progress=False)
    assert all(not replies for replies in script.values())  # every scripted reply was asked for
    assert result["invalid_replies_retried"] == 3
    grammar = result["categories"]["grammar"]
    # per-story means 6, 7, 9: mean 22/3; sd = sqrt(((6-22/3)^2 + (7-22/3)^2 + (9-22/3)^2) / 2) = sqrt(7/3);
    # half width = t(0.975, 2) * sd / sqrt(3) = 4.302653 * 0.881917 = 3.794583
    assert grammar["mean"] == pytest.approx(22 / 3)
    assert grammar["ci95"] == pytest.approx([22 / 3 - 3.794583, 22 / 3 + 3.794583], abs=1e-5)
    assert grammar["n"] == 3
    # plot: per-story means 4, 5, 4: mean 13/3, sd sqrt(1/3), half 4.302653 * 0.333333 = 1.434218
    assert result["categories"]["plot"]["ci95"] == pytest.approx([13 / 3 - 1.434218, 13 / 3 + 1.434218], abs=1e-5)
    assert result["categories"]["spelling"] == {"mean": 9.0, "ci95": [9.0, 9.0], "n": 3}
    assert "| grammar | 7.33 | [3.54, 11.13] | 3 |" in result["markdown"]
    assert (tmp_path / "judge.png").is_file() and result["charts"] == ["judge.png"]
    json.dumps(result)


def test_the_judge_sees_the_rubric_and_the_anchors_and_asks_for_json(tmp_path):
    app = scripted_judge({"A": [scores(5)]})
    with live_app(app) as url:
        judge_section(["A"], JudgeConfig(base_url=f"{url}/v1", model="scripted", samples=1), tmp_path,
                      progress=False)
    (request,) = app.state.requests
    messages = request["messages"]
    assert messages[0]["role"] == "system" and all(c in messages[0]["content"] for c in CATEGORIES)
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 3 + ["user"]  # three bundled anchors
    assert json.loads(messages[2]["content"])["grammar"] == 9
    assert request["response_format"] == {"type": "json_object"}


@pytest.mark.slow
def test_spearman_with_human_ratings_by_hand(tmp_path):
    # judge grammar 3, 5, 8, 9 vs human 2, 6, 5, 9: ranks 1 2 3 4 vs 1 3 2 4, sum d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8
    # judge plot 2, 4, 6, 8 vs human 1, 2, 3, 4: rho = 1; style is rated by nobody
    judged = {"H1": (3, 2), "H2": (5, 4), "H3": (8, 6), "H4": (9, 8)}
    human = {"H1": (2, 1), "H2": (6, 2), "H3": (5, 3), "H4": (9, 4)}
    ratings = tmp_path / "human.jsonl"
    ratings.write_text("".join(json.dumps({"story": s, "scores": {"grammar": g, "plot": p}}) + "\n"
                               for s, (g, p) in human.items()))
    as_csv = tmp_path / "human.csv"
    as_csv.write_text("story,grammar,plot\n" + "".join(f"{s},{g},{p}\n" for s, (g, p) in human.items()))
    for path in (ratings, as_csv):
        script = {"A": [scores(5)], **{s: [scores(g, plot=p)] for s, (g, p) in judged.items()}}
        with live_app(scripted_judge(script)) as url:
            config = JudgeConfig(base_url=f"{url}/v1", model="scripted", samples=1, human_ratings=str(path))
            result = judge_section(["A"], config, tmp_path, progress=False)
        agreement = result["human_agreement"]
        assert agreement["grammar"] == {"spearman": pytest.approx(0.8), "n": 4}
        assert agreement["plot"] == {"spearman": pytest.approx(1.0), "n": 4}
        assert agreement["style"] == {"spearman": None, "n": 0}
        assert "| grammar | 0.800 | 4 |" in result["markdown"]
        assert result["categories"]["grammar"]["ci95"] is None  # one story, one sample: no interval


def test_talelab_serve_answers_with_stories_so_the_judge_retries_then_fails_naming_the_endpoint(stories260k, tmp_path):
    app = create_app(load_models([f"stories260K={stories260k}"]), ServeConfig())
    story = ["Once upon a time, Lily found a red ball in the park."]
    with live_app(app) as url:
        config = JudgeConfig(base_url=f"{url}/v1", model="stories260K", samples=1, retries=1, max_tokens=20,
                             json_mode=False)
        with pytest.raises(JudgeError) as failure:
            judge_section(story, config, tmp_path, progress=False)
        # JSON mode asks for response_format, which a story model cannot honour: refused at once, not ignored
        with pytest.raises(JudgeError) as refused:
            judge_section(story, dataclasses.replace(config, json_mode=True), tmp_path, progress=False)
    message = str(failure.value)
    assert f"{url}/v1" in message and "no valid scores after 2 attempts" in message and "invalid reply" in message
    assert "\n" not in message and "\n" not in str(refused.value) and "response_format" in str(refused.value)


@pytest.mark.slow
def test_an_endpoint_that_is_down_or_refuses_the_key_is_a_one_line_error(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", samples=1, retries=1, timeout=5)
    with pytest.raises(JudgeError, match=rf"judge endpoint http://127.0.0.1:{port}/v1 .*APIConnectionError") as e:
        judge_section(["A"], down, tmp_path, progress=False)
    assert "\n" not in str(e.value)
    app = scripted_judge({})
    with live_app(app) as url:
        locked = JudgeConfig(base_url=f"{url}/v1", model="locked", api_key_env="TALELAB_TEST_KEY", samples=1,
                             retries=3)
        with pytest.raises(JudgeError, match=r"HTTP 401: Incorrect API key provided \(is \$TALELAB_TEST_KEY set\?\)"):
            judge_section(["A"], locked, tmp_path, progress=False)
    assert len(app.state.requests) == 1  # not retried: the same key would fail again


def test_a_rubric_without_categories_or_anchors_that_do_not_fit_it_are_config_errors(tmp_path):
    empty = tmp_path / "rubric.yaml"
    empty.write_text("categories: {}\n")
    config = JudgeConfig(base_url="http://127.0.0.1:9/v1", rubric=str(empty))
    with pytest.raises(ConfigError, match=r"rubric\.yaml: the rubric has no categories"):
        judge_section(["A"], config, tmp_path, progress=False)
    own = tmp_path / "own.yaml"
    own.write_text("categories:\n  humour: Is it funny?\n")
    with pytest.raises(ConfigError, match=r"anchor 0: missing humour; unknown grammar.*--anchors none"):
        judge_section(["A"], JudgeConfig(rubric=str(own)), tmp_path, progress=False)
