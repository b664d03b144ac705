"""Hugging Face causal LMs, studied through output_attentions and forward hooks: stories260K as a Llama gives the
same scores and activations as the talelab model; a GPT-2 built locally runs both commands."""

import json

import pytest
import torch

from talelab.cli import main
from talelab.interpret.attention import SCORES, run_attention
from talelab.interpret.neurons import run_neurons

VALID = "data/tinystories/valid-head.txt"


@pytest.mark.slow
def test_llama_heads_score_as_the_same_talelab_model(stories260k, stories260k_hf, tmp_path):
    chosen = dict(data=VALID, samples=6, layers=[0, 4], heads=[1, 6], progress=False)
    ours = run_attention(stories260k, tmp_path / "ours", **chosen)
    theirs = run_attention(stories260k_hf, tmp_path / "theirs", **chosen)
    assert (ours["family"], theirs["family"]) == ("talelab", "llama")
    for a, b in zip(ours["heads"], theirs["heads"], strict=True):
        assert a["labels"] == b["labels"]
        for score in SCORES:
            assert a[score] == pytest.approx(b[score], abs=2e-4)


def test_llama_neurons_fire_as_in_the_same_talelab_model(stories260k, stories260k_hf, tmp_path):
    chosen = dict(data=VALID, samples=6, layers=[2], top=3, progress=False)
    ours = run_neurons(stories260k, tmp_path / "ours", **chosen)
    theirs = run_neurons(stories260k_hf, tmp_path / "theirs", **chosen)
    for a, b in zip(ours["neurons"], theirs["neurons"], strict=True):
        assert [e["activation"] for e in a["top"]] == pytest.approx([e["activation"] for e in b["top"]], abs=1e-3)
    assert [n["neuron"] for n in ours["ranking"]] == [n["neuron"] for n in theirs["ranking"]]


def test_gpt2_built_locally_runs_both_commands(tok512, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tok512.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=tok512.bos_id, eos_token_id=tok512.eos_id)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tok512.save(tmp_path / "gpt2")
    common = ["--model", str(tmp_path / "gpt2"), "--samples", "4", "--no-progress"]
    assert main(["interpret", "attention", *common, "--heads", "0", "--map-tokens", "8",
                 "--out", str(tmp_path / "att")]) == 0
    assert main(["interpret", "neurons", *common, "--top", "2", "--out", str(tmp_path / "neu")]) == 0
    heads = json.loads((tmp_path / "att" / "heads.json").read_text())
    neurons = json.loads((tmp_path / "neu" / "neurons.json").read_text())
    assert heads["family"] == "gpt2" and [(h["layer"], h["head"]) for h in heads["heads"]] == [(0, 0), (1, 0)]
    assert len(neurons["neurons"]) == 2 * 4 * 32  # GPT-2's MLP is 4 x n_embd wide
    assert (tmp_path / "att" / "attention" / "layer1_head0.png").is_file()
