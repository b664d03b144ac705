"""Every model family decodes through the same code: batched rows equal single streams, and each family goes through
generate, the generating evaluation suites, batched serving and `prefs build` (recurrent and compressor models
once stopped at generate_batch: "cannot decode left-padded batches")."""

import json
import urllib.request

import pytest
import torch

from talelab.config import ModelConfig, PrefsConfig, SamplingConfig
from talelab.evaluate.report import failures, run_eval
from talelab.finetune.prefs import build_pairs
from talelab.generate import generate, generate_batch, generate_text
from talelab.models import build_model
from talelab.models.storage import load_model
from talelab.train.loop import train

from .evaluate.test_report import small
from .serve.conftest import live_server

FAMILIES = ["transformer", "rnn", "lstm", "gru", "compressor"]
PROMPTS = [[5, 9, 13], [7], [3, 1, 4, 1, 5, 9, 2, 6], [11, 12]]


def random_model(family: str):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, vocab_size=61, d_model=32, n_layers=2, n_heads=4,
                                    context_length=40))
    with torch.no_grad():  # large weights: confident, varied predictions, so a mistake would show
        for p in model.parameters():
            p.mul_(4.0)
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_rows_equal_single_streams_for_every_family(family):
    model = random_model(family)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    batch = generate_batch(model, PROMPTS, [greedy] * len(PROMPTS), eos_ids=None)
    for prompt, row in zip(PROMPTS, batch):
        assert row.tokens == generate(model, prompt, greedy, eos_id=None)[0]
    sampled = [SamplingConfig(temperature=0.9, top_p=0.9, seed=s, max_new_tokens=10) for s in range(len(PROMPTS))]
    batch = generate_batch(model, PROMPTS, sampled, eos_ids=None)
    for prompt, config, row in zip(PROMPTS, sampled, batch):
        assert row.tokens == generate(model, prompt, config, eos_id=None)[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_configs):
    """A tiny model of every family, trained a few steps on the real stories."""
    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:
        train(*tiny_configs(root / family, model={"family": family, "context_length": 256}, max_steps=4,
                            eval_interval=4, checkpoint_interval=4), log=lambda *_: None)
    return root


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_goes_through_generate_eval_serve_and_prefs(family, runs, prepared, tmp_path):
    run = runs / family
    model, tokenizer, _ = load_model(run)
    assert model.config.family == family
    assert generate_text(model, tokenizer, SamplingConfig(max_new_tokens=8, num_samples=2, seed=1))

    suites = ("likelihood", "completion", "diversity", "memorization", "quality", "tags", "probes")
    report = run_eval(run, small(tmp_path / "eval", suite=",".join(suites), data=str(prepared),
                                 train_data=str(prepared), min_words=20, max_new_tokens=16))
    assert not failures(report), failures(report)
    assert set(report["sections"]) >= set(suites)

    with live_server({family: run}) as url:
        body = json.dumps({"model": family, "prompt": "Once upon a time", "max_tokens": 8, "n": 3, "seed": 4})
        request = urllib.request.Request(f"{url}/v1/completions", body.encode(), {"Content-Type": "application/json"})
        choices = json.load(urllib.request.urlopen(request, timeout=60))["choices"]
    assert len(choices) == 3 and all(isinstance(c["text"], str) for c in choices)

    out = tmp_path / "pairs.jsonl"
    build_pairs(PrefsConfig(data=str(prepared), out=str(out), rejected="sample", model=str(run), max_pairs=3,
                            max_new_tokens=8, progress=False))
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(pairs) == 3 and all(p["rejected"] != p["chosen"] for p in pairs)
