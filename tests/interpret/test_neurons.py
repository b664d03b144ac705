"""A neuron wired to one token lists that token first; top activations kept batch by batch are the top of all of
them; the command writes its reports for stories260K and reads a prepared directory."""

import json

import pytest
import torch

from talelab.cli import main
from talelab.config import ModelConfig
from talelab.interpret.neurons import WINDOW, TopActivations, context_windows, run_neurons
from talelab.models.transformer import Transformer

VALID = "data/tinystories/valid-head.txt"


def planted_neuron_model(vocab_size: int, token_id: int, neuron: int) -> Transformer:
    """One layer whose attention adds nothing, so the MLP reads the token embedding alone; `neuron`'s gate and up
    rows both point along `token_id`'s embedding, so act(gate) * up is largest for that token."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=vocab_size, d_model=64, n_layers=1, n_heads=2, context_length=128))
    with torch.no_grad():
        model.embed.weight.copy_(torch.nn.functional.normalize(torch.randn(vocab_size, 64), dim=-1))
        model.blocks[0].attn.out.weight.zero_()
        up = model.blocks[0].mlp.up.weight  # rows [0, d_ff): gate, [d_ff, 2 d_ff): up
        d_ff = model.config.d_ff
        up[neuron] = up[d_ff + neuron] = 2.0 * model.embed.weight[token_id]
    return model


def test_a_neuron_wired_to_one_token_lists_that_token_first(tok512, saved, tmp_path):
    play = tok512.backend.token_to_id("▁play")
    model_dir = saved(planted_neuron_model(tok512.vocab_size, play, neuron=7), tok512)
    report = run_neurons(model_dir, tmp_path, data=VALID, samples=30, top=5, progress=False)
    neuron = report["neurons"][7]
    assert [e["token"] for e in neuron["top"]] == [" play"] * 5
    assert {e["word"] for e in neuron["top"]} <= {"play", "played", "playing", "plays"}
    assert neuron["top_class"] == "verb" and neuron["share"] == 1.0
    assert all(" play" in e["before"][-12:] + e["token"] + e["after"] for e in neuron["top"])
    assert report["neurons"][6]["top"][0]["activation"] < neuron["top"][4]["activation"] / 2


def test_top_activations_kept_batch_by_batch_are_the_top_of_all_of_them():
    torch.manual_seed(0)
    activations = torch.randn(6, 9, 5)  # 6 texts of up to 9 tokens, 5 neurons
    ids = torch.randint(0, 50, (6, 9))
    lengths = torch.tensor([9, 7, 9, 3, 9, 8])
    valid = (torch.arange(9) >= 1) & (torch.arange(9) < lengths[:, None])
    where = torch.stack(torch.broadcast_tensors(torch.arange(6)[:, None], torch.arange(9)), dim=-1)
    best = TopActivations(neurons=5, k=4)
    for i in range(0, 6, 2):
        best.add(activations[i:i + 2], context_windows(ids[i:i + 2]), where[i:i + 2], valid[i:i + 2])
    expected = activations.masked_fill(~valid[..., None], float("-inf")).flatten(0, 1).topk(4, dim=0).values.T
    assert torch.equal(best.values, expected)
    text, position = best.where[2, 0]
    assert activations[text, position, 2] == best.values[2, 0]
    assert best.windows.shape == (5, 4, WINDOW)
    assert best.windows[2, 0, 10].item() == ids[text, position]  # the window is centred on the token


def test_neurons_command_on_stories260k_writes_its_reports(stories260k, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["interpret", "neurons", "--model", str(stories260k), "--data", VALID, "--samples", "6",
                 "--layers", "0", "4", "--top", "3", "--rank", "5", "--out", str(out), "--no-progress"])
    assert code == 0
    assert "## Most class-selective neurons" in capsys.readouterr().out
    report = json.loads((out / "neurons.json").read_text())
    assert [n["layer"] for n in report["neurons"]] == [0] * 172 + [4] * 172  # stories260K's hidden_dim is 172
    assert all(len(n["top"]) == 3 for n in report["neurons"])
    assert len(report["ranking"]) == 5 and report["ranking"][0]["selectivity"] >= report["ranking"][-1]["selectivity"]
    assert sum(report["base_rates"].values()) == pytest.approx(1.0, abs=1e-3)
    markdown, page = (out / "neurons.md").read_text(), (out / "neurons.html").read_text()
    assert "### Layer 4 neuron 171" in markdown and "<mark>" in page and "id='L0N0'" in page


def test_a_prepared_directory_is_read_through_its_validation_split(stories260k, prepared, tmp_path):
    report = run_neurons(stories260k, tmp_path, data=str(prepared), samples=3, layers=[1], top=2, progress=False)
    assert report["texts"] == 3 and report["tokens"] > 100
