"""Bad input ends as one line naming the thing at fault, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from talelab.cli import main
from talelab.config import LoraConfig
from talelab.errors import ConfigError, InputError
from talelab.finetune.base import load_base, lora_config
from talelab.finetune.formats import build_examples
from talelab.finetune.sft import finetune


@pytest.fixture(scope="module")
def llama(stories260k_hf):
    return load_base(str(stories260k_hf))


def test_base_without_tokenizer_is_one_line_naming_the_directory(stories260k_hf, tmp_path, capsys):
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(stories260k_hf / name, bare / name)
    code = main(["finetune", "--base", str(bare), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert str(bare) in err and "no tokenizer" in err


def test_unknown_target_module_lists_the_valid_ones(llama):
    model, _ = llama
    with pytest.raises(ConfigError) as e:
        lora_config(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0, target_modules="c_attn,q_proj"))
    message = str(e.value)
    assert "c_attn not in this llama" in message
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in message


def test_unknown_tag_names_file_line_and_tag(llama, tmp_path):
    _, tokenizer = llama
    data = tmp_path / "tagged.jsonl"
    rows = [{"story": "Tom said \"hi\".", "instruction": {"features": ["Dialogue"], "words": ["hi"]}},
            {"story": "It rained.", "instruction": {"features": ["Happy"]}}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{data}: record 2: unknown feature 'Happy' \(choose from Dialogue, "):
        build_examples("stories-tags", str(data), tokenizer)


def test_chat_template_missing_is_one_line(llama):
    _, tokenizer = llama
    with pytest.raises(ConfigError, match="has no chat template"):
        build_examples("instruct", "data/instruct/dolly-subset.jsonl", tokenizer, template="chat")


def test_row_without_the_needed_field_names_file_and_line(llama, tmp_path):
    _, tokenizer = llama
    data = tmp_path / "instruct.jsonl"
    data.write_text(json.dumps({"instruction": "Name a colour.", "output": "Red."}) + "\n"
                    + json.dumps({"instruction": "Name a fruit."}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"{data}:2: no string field 'output' or 'response' or 'answer'"):
        build_examples("instruct", str(data), tokenizer)
    stories = tmp_path / "stories.jsonl"
    stories.write_text(json.dumps({"title": "no story here"}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"{stories}: record 1: no string field 'text' or 'story'"):
        build_examples("stories-tags", str(stories), tokenizer)


def test_resume_without_a_checkpoint_and_unknown_preset(stories260k_hf, quick, tmp_path, capsys):
    with pytest.raises(InputError, match="no checkpoint in"):
        finetune(quick(base=str(stories260k_hf), out=str(tmp_path / "fresh"), resume=True))
    assert main(["finetune", "--preset", "gpt5-tags", "--base", "x"]) == 2
    err = capsys.readouterr().err
    assert "'gpt5-tags'" in err and "distilgpt2-tags" in err and "tinyllama-dolly" in err


def test_mixed_precision_flags_tell_trainer_it_runs_on_the_cpu_when_there_is_no_gpu():
    """Trainer refuses bf16 without a GPU unless use_cpu is set: `talelab dpo --dtype bfloat16` stopped with a
    ValueError traceback on CPU."""
    from talelab.finetune.base import precision_flags

    assert precision_flags("bfloat16") == {"bf16": True, "fp16": False, "use_cpu": True}
    assert precision_flags("auto") == {"bf16": False, "fp16": False, "use_cpu": True}


def test_float16_without_a_gpu_is_one_line_before_any_model_loads(tmp_path, capsys):
    """fp16 needs CUDA's gradient scaler: finetune and dpo say so before loading a model or reading data (a base and
    data that do not exist are never reached)."""
    for argv in (["finetune", "--base", "nowhere"], ["dpo", "--base", "nowhere", "--data", "nothing.jsonl"]):
        assert main([*argv, "--dtype", "float16", "--out", str(tmp_path / argv[0])]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "dtype=float16 needs a GPU" in error, argv
