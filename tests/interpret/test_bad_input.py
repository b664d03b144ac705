"""Bad input is one line on stderr and a non-zero exit: indices out of range, a text longer than the context,
models without attention weights (naming the supported ones)."""

import pytest

from talelab.cli import main
from talelab.config import ModelConfig
from talelab.models import build_model

SUPPORTED = "supported: talelab transformers and Hugging Face causal LMs of type llama or gpt2"


def one_line_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("talelab: error: "), err
    return lines[0]


@pytest.mark.parametrize("command", ["attention", "neurons"])
def test_a_layer_out_of_range_names_the_layers_there_are(command, stories260k, tmp_path, capsys):
    line = one_line_error(capsys, "interpret", command, "--model", stories260k, "--layers", 0, 5, "--out", tmp_path)
    assert "layer 5 is out of range: the model has 5 layers (0 to 4)" in line


def test_a_head_out_of_range_names_the_heads_there_are(stories260k, tmp_path, capsys):
    line = one_line_error(capsys, "interpret", "attention", "--model", stories260k, "--heads", -1, "--out", tmp_path)
    assert "head -1 is out of range: the model has 8 heads (0 to 7)" in line


def test_a_text_longer_than_the_context_gives_both_lengths(stories260k, tok512, tmp_path, capsys):
    text = "Once upon a time, there was a dog. " * 60
    length = len(tok512.encode(text)) + 1  # with the beginning-of-story token
    line = one_line_error(capsys, "interpret", "attention", "--model", stories260k, "--text", text, "--out", tmp_path)
    assert f"the text is {length} tokens long" in line and "context of 512" in line


@pytest.mark.parametrize("command", ["attention", "neurons"])
def test_a_recurrent_talelab_model_is_refused_naming_the_supported_models(command, tok512, saved, tmp_path,
                                                                          capsys):
    lstm = build_model(ModelConfig(family="lstm", vocab_size=tok512.vocab_size, d_model=16, n_layers=1,
                                   context_length=32))
    line = one_line_error(capsys, "interpret", command, "--model", saved(lstm, tok512), "--out", tmp_path / "out")
    assert "a talelab lstm model has no attention heads or MLP neurons" in line and SUPPORTED in line


def test_a_hugging_face_model_without_attention_is_refused_naming_the_supported_types(tmp_path, capsys):
    from transformers import MambaConfig, MambaForCausalLM

    MambaForCausalLM(MambaConfig(vocab_size=512, hidden_size=16, state_size=4, num_hidden_layers=1,
                                 conv_kernel=2)).save_pretrained(tmp_path / "mamba")
    capsys.readouterr()  # transformers' progress bar while saving
    line = one_line_error(capsys, "interpret", "neurons", "--model", tmp_path / "mamba", "--out", tmp_path / "out")
    assert "model type 'mamba' is not supported" in line and SUPPORTED in line


def test_a_missing_model_directory_is_one_line(tmp_path, capsys):
    assert "no such model directory" in one_line_error(capsys, "interpret", "attention", "--model",
                                                       tmp_path / "nowhere")
