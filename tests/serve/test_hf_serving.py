"""`talelab serve` on Hugging Face models and LoRA adapters: a live server on loopback answers with the text that
talelab's own model (same weights) writes, alone and in shared batches."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from urllib.request import urlopen

import openai
import pytest
import torch

from talelab.config import SamplingConfig
from talelab.generate import generate_text
from talelab.models.storage import load_model

from .conftest import live_server

ONCE = "Once upon a time"
PROMPTS = [ONCE, "Lily saw a big dog in the park and she", "Tom", "One day, a little bird"]


@pytest.fixture(scope="module")
def adapter(stories260k_hf, tmp_path_factory):
    """A rank-2 LoRA adapter over stories260K (B randomised so that it writes differently)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(stories260k_hf),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("lora") / "stories260K-lora"
    lora.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf_server(stories260k, stories260k_hf, adapter):
    # a window long enough that requests sent together are decoded as one batch
    with live_server({"hf": stories260k_hf, "talelab": stories260k, "lora": adapter}, batch_window_ms=300) as url:
        yield url


@pytest.fixture
def hf_client(hf_server):
    return openai.OpenAI(base_url=f"{hf_server}/v1", api_key="not-needed", max_retries=0, timeout=60)


def complete(client, model: str, prompt: str, **options) -> str:
    return client.completions.create(model=model, prompt=prompt, temperature=0, **options).choices[0].text


def test_hugging_face_models_and_adapters_are_listed_with_their_context(hf_client):
    cards = {m.id: m for m in hf_client.models.list()}
    assert set(cards) == {"hf", "talelab", "lora"}
    assert cards["hf"].model_extra["context_length"] == 512
    assert cards["hf"].model_extra["parameters"] == cards["talelab"].model_extra["parameters"] == 260_032


@pytest.mark.slow
def test_greedy_completion_from_the_hf_model_equals_the_talelab_model(hf_client):
    text = complete(hf_client, "hf", ONCE, max_tokens=100)
    assert text == complete(hf_client, "talelab", ONCE, max_tokens=100)
    assert text.startswith(", there was a little girl named Lily.")
    streamed = hf_client.completions.create(model="hf", prompt=ONCE, max_tokens=100, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == text


@pytest.mark.slow
def test_requests_sent_together_share_batches_and_each_gets_its_own_greedy_story(hf_client, hf_server):
    alone = [complete(hf_client, "hf", p, max_tokens=30) for p in PROMPTS]
    before = json.loads(urlopen(f"{hf_server}/health").read())["models"]["hf"]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: complete(hf_client, "hf", p, max_tokens=30), PROMPTS))
    after = json.loads(urlopen(f"{hf_server}/health").read())["models"]["hf"]
    assert together == alone
    assert after["batches"] - before["batches"] < len(PROMPTS) and after["largest_batch"] > 1


def test_top_alternatives_of_the_hf_model_match_the_talelab_model(hf_client):
    def alternatives(model):
        answer = hf_client.completions.create(model=model, prompt=ONCE, max_tokens=5, temperature=0, logprobs=3)
        return answer.choices[0].logprobs.top_logprobs

    for hf, talelab in zip(alternatives("hf"), alternatives("talelab")):
        assert list(hf) == list(talelab)
        assert list(hf.values()) == pytest.approx(list(talelab.values()), abs=1e-4)


@pytest.mark.slow
def test_a_served_adapter_writes_what_it_writes_through_load_model(hf_client, adapter):
    model, tokenizer, _ = load_model(adapter)
    expected = generate_text(model, tokenizer, SamplingConfig(prompt=ONCE, max_new_tokens=40, temperature=0))[0]
    text = complete(hf_client, "lora", ONCE, max_tokens=40)
    assert ONCE + text == expected and text != complete(hf_client, "hf", ONCE, max_tokens=40)
