"""One device and precision rule for every command: auto is CUDA when present (here, in the test suite, the CPU);
on CUDA the defaults are bfloat16, and int8 (a CPU kernel) is refused there with one line."""

import pytest
import torch

from talelab.cli import main
from talelab.config import DecodeConfig, TrainConfig
from talelab.devices import decoding_dtype, pick_device, training_dtype
from talelab.errors import ConfigError
from talelab.generate import fast_decoder, load_decoder
from talelab.models.storage import read_config, resolve_model_dir
from talelab.serve.app import load_models

CUDA = torch.device("cuda")  # a device object needs no GPU; only using it does


def test_auto_is_the_cpu_without_cuda_and_float32_there():
    assert pick_device("auto") == torch.device("cpu")
    assert training_dtype("auto", torch.device("cpu")) == "float32"
    assert decoding_dtype("auto", torch.device("cpu")) == "float32"
    assert TrainConfig().dtype == "auto" and DecodeConfig() == DecodeConfig("auto", "auto", False)


def test_decoding_on_cuda_defaults_to_bfloat16_and_refuses_int8():
    assert decoding_dtype("auto", CUDA) == "bfloat16"
    assert decoding_dtype("float32", CUDA) == "float32"
    with pytest.raises(ConfigError, match="int8 quantizes for the CPU"):
        decoding_dtype("int8", CUDA)
    with pytest.raises(ConfigError, match="float16 needs CUDA"):
        training_dtype("float16", torch.device("cpu"))


def test_asking_for_cuda_without_it_is_one_line_for_every_command_that_runs_a_model(capsys, stories260k):
    with pytest.raises(ConfigError, match="no CUDA device"):
        pick_device("cuda")
    for argv in (["generate", "--model", stories260k, "--device", "cuda"],
                 ["eval", "loss", "--model", stories260k, "--device", "cuda"],
                 ["serve", "--model", f"s={stories260k}", "--device", "cuda"],
                 ["interpret", "attention", "--model", stories260k, "--device", "cuda", "--samples", 2],
                 ["interpret", "neurons", "--model", stories260k, "--device", "cuda", "--samples", 2]):
        assert main([str(a) for a in argv]) == 2  # a configuration error
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no CUDA device is available" in err[0], err


def test_an_int8_model_on_another_device_is_refused_not_left_unquantized(stories260k):
    model, _, _ = load_decoder(stories260k, DecodeConfig(device="cpu"))
    meta = model.to("meta")  # a non-CPU device that needs no hardware: the int8 kernel is the CPU's alone
    with pytest.raises(ConfigError, match="int8 quantizes for the CPU's int8 kernel only; on meta"):
        fast_decoder(meta, dtype="int8")


@pytest.mark.slow
def test_generate_eval_and_serve_decode_in_the_dtype_they_are_given(capsys, stories260k):
    model, _, _ = load_decoder(stories260k, DecodeConfig(dtype="bfloat16"))
    assert next(model.parameters()).dtype == torch.bfloat16
    served = load_models([f"s={stories260k}"], DecodeConfig(dtype="int8"))
    assert any(type(m).__name__ == "Int8Linear" for m in served["s"].model.modules())
    assert main(["generate", "--model", str(stories260k), "--dtype", "bfloat16", "--max-new-tokens", "8",
                 "--temperature", "0"]) == 0
    bf16_story = capsys.readouterr().out
    assert main(["eval", "loss", "--model", str(stories260k), "--dtype", "bfloat16"]) == 0
    assert '"bits_per_byte"' in capsys.readouterr().out
    assert bf16_story.startswith("Once upon a time")


def test_a_training_run_records_the_dtype_auto_chose(tiny_run):
    """The run's config says what it trained in, not 'auto', so that a reader (or a resume elsewhere) knows."""
    assert read_config(resolve_model_dir(tiny_run))["train"]["dtype"] == "float32"
