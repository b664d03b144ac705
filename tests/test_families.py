"""Every model family goes through generate, the evaluation suites, batched serving and `prefs build` (recurrent and
compressor models once stopped at generate_batch; tests/test_generate_batch.py checks their batched rows)."""

import json
import urllib.request

import pytest

from talelab.config import PrefsConfig, SamplingConfig
from talelab.evaluate.report import failures, run_eval
from talelab.finetune.prefs import build_pairs
from talelab.generate import generate_text
from talelab.models.storage import load_model
from talelab.train.loop import train

from .evaluate.test_report import small
from .serve.conftest import live_server

FAMILIES = ["transformer", "rnn", "lstm", "gru", "compressor"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_configs):
    """A tiny model of every family, trained a few steps on the real stories."""
    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:
        train(*tiny_configs(root / family, model={"family": family, "context_length": 256}, max_steps=4,
                            eval_interval=4, checkpoint_interval=4), log=lambda *_: None)
    return root


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_every_family_goes_through_generate_eval_serve_and_prefs(family, runs, prepared, tmp_path):
    run = runs / family
    model, tokenizer, _ = load_model(run)
    assert model.config.family == family
    assert generate_text(model, tokenizer, SamplingConfig(max_new_tokens=8, num_samples=2, seed=1))

    suites = ("likelihood", "completion", "diversity", "memorization", "quality", "tags", "probes")
    report = run_eval(small(run, tmp_path / "eval", suite=",".join(suites), data=str(prepared),
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
