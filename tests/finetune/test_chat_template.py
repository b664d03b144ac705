"""An instruct model keeps the template it was trained with: `finetune --task instruct` stores it as the tokenizer's
chat template, and `generate --chat` (and serve's chat endpoint, tests/serve) prompt the model exactly as training
did, while story models keep continuing stories."""

from __future__ import annotations

import pytest

from talelab.cli import main
from talelab.config import SamplingConfig
from talelab.errors import ConfigError
from talelab.finetune.formats import CHAT_TEMPLATES, build_examples
from talelab.finetune.sft import finetune
from talelab.generate import generate
from talelab.models.storage import load_model

from ..serve.conftest import live_server, post
from ..serve.test_playground import CHROMIUM, CHROMIUM_ARGS, set_value


@pytest.fixture(scope="module")
def alpaca_model(tmp_path_factory, stories260k_hf):
    from talelab.config import FinetuneConfig
    from talelab.settings import resolve

    out = tmp_path_factory.mktemp("instruct") / "alpaca"
    config = resolve(FinetuneConfig, [("test", dict(base=str(stories260k_hf), task="instruct", max_steps=2,
                                                    data="data/instruct/dolly-subset.jsonl", out=str(out),
                                                    batch_size=4, max_length=128, logging_steps=1, save_steps=1000,
                                                    progress=False, samples=0, eval_fraction=0.0))])
    summary = finetune(config, log=lambda _: None)
    assert summary["template"] == "alpaca"
    return out


@pytest.mark.slow
def test_the_alpaca_template_is_stored_and_renders_the_training_prompt(alpaca_model, stories260k_hf):
    _, tokenizer, _ = load_model(alpaca_model)
    assert tokenizer.chat_template == CHAT_TEMPLATES["alpaca"]
    from transformers import AutoTokenizer

    hf_tokenizer = AutoTokenizer.from_pretrained(stories260k_hf)
    examples, _ = build_examples("instruct", "data/instruct/dolly-subset.jsonl", hf_tokenizer)
    row = examples[5]
    instruction = row["prompt"].split("### Instruction:\n", 1)[1].split("\n\n### Response:")[0]
    if "### Input:" not in row["prompt"]:  # a question without context: the form a chat message takes
        rendered = tokenizer.chat_prompt([{"role": "user", "content": instruction}])
        assert rendered == row["prompt"].removeprefix(hf_tokenizer.bos_token if not hf_tokenizer("a")["input_ids"][:1]
                                                      == [hf_tokenizer.bos_token_id] else "")
    # and transformers' own apply_chat_template renders the same text from the saved directory
    saved = AutoTokenizer.from_pretrained(alpaca_model)
    messages = [{"role": "user", "content": "Name three colours."}]
    assert saved.apply_chat_template(messages, add_generation_prompt=True, tokenize=False).endswith(
        tokenizer.chat_prompt(messages))


@pytest.mark.slow
def test_generate_chat_answers_through_the_template(alpaca_model, capsys):
    assert main(["generate", "--model", str(alpaca_model), "--chat", "--prompt", "Name three colours.",
                 "--temperature", "0", "--max-new-tokens", "24"]) == 0
    printed = capsys.readouterr().out.strip()
    model, tokenizer, _ = load_model(alpaca_model)
    prompt = tokenizer.chat_prompt([{"role": "user", "content": "Name three colours."}])
    assert prompt.endswith("### Instruction:\nName three colours.\n\n### Response:")
    answer = generate(model, tokenizer.encode(prompt, bos=True), SamplingConfig(temperature=0, max_new_tokens=24),
                      tokenizer.eos_id)[0]
    assert printed == tokenizer.decode(answer).strip()


@pytest.mark.slow
def test_serve_answers_an_instruct_model_s_chat_through_its_template_and_a_story_model_as_before(alpaca_model,
                                                                                                 stories260k):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]
    model, tokenizer, _ = load_model(alpaca_model)
    prompt = tokenizer.chat_prompt(messages)
    with live_server({"alpaca": alpaca_model, "stories260K": stories260k}) as url:
        status, chat = post(url, "/v1/chat/completions", {"model": "alpaca", "messages": messages, "max_tokens": 16,
                                                         "temperature": 0})
        assert status == 200, chat
        _, completion = post(url, "/v1/completions", {"model": "alpaca", "prompt": prompt, "max_tokens": 16,
                                                      "temperature": 0})
        _, story = post(url, "/v1/chat/completions", {"model": "stories260K", "messages": messages,
                                                      "max_tokens": 16, "temperature": 0})
        _, beginning = post(url, "/v1/completions", {"model": "stories260K", "prompt": "Name three colours.",
                                                     "max_tokens": 16, "temperature": 0})
    assert chat["choices"][0]["message"]["content"] == completion["choices"][0]["text"]
    assert chat["usage"]["prompt_tokens"] == len(tokenizer.encode(prompt, bos=True))
    assert story["choices"][0]["message"]["content"] == beginning["choices"][0]["text"]  # the last user message


@pytest.mark.slow
def test_the_playground_asks_an_instruct_model_through_its_chat_endpoint(alpaca_model):
    if not CHROMIUM.exists():
        pytest.skip(f"browser test needs Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    question = "Name three colours."
    with live_server({"alpaca": alpaca_model}) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page, errors = browser.new_page(), []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/")
        page.wait_for_function("document.querySelectorAll('#model-a option').length === 1")
        page.fill("#beginning", question)
        for knob, value in (("#temperature", 0), ("#repetition_penalty", 1), ("#max_tokens", 16)):
            set_value(page, knob, value)
        page.click("button:has-text('Generate')")
        card = page.locator(".story.done")
        card.wait_for(timeout=30_000)
        shown, tokens = card.locator(".generated").text_content(), card.locator(".tok").count()
        _, chat = post(url, "/v1/chat/completions", {"model": "alpaca", "max_tokens": 16, "temperature": 0,
                                                     "messages": [{"role": "user", "content": question}]})
        browser.close()
    assert not errors, errors
    assert shown == chat["choices"][0]["message"]["content"] and tokens > 3  # the token view reads chat logprobs


def test_a_story_model_has_no_template_and_generate_chat_says_so(stories260k, capsys):
    _, tokenizer, _ = load_model(stories260k)
    assert tokenizer.chat_template is None
    with pytest.raises(ConfigError, match="no chat template"):
        tokenizer.chat_prompt([{"role": "user", "content": "Hi"}])
    assert main(["generate", "--model", str(stories260k), "--chat", "--prompt", "Hi"]) == 2
    assert "no chat template" in capsys.readouterr().err
