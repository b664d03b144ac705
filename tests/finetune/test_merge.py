"""`talelab merge`: a LoRA adapter folded into its base gives the logits the adapter gave, as a standalone HF model."""

from __future__ import annotations

import json

import pytest
import torch

from talelab.cli import main
from talelab.config import LoraConfig
from talelab.errors import InputError
from talelab.finetune.merge import merge_adapter

TEXT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


def make_adapter(base, out, seed: int = 0):
    """A LoRA adapter on every preset target of `base`, its B matrices drawn small and non-zero (as after training),
    saved with the tokenizer the way `talelab dpo` and `talelab finetune` save theirs."""
    from peft import get_peft_model

    from talelab.finetune.base import load_base, lora_config

    model, tokenizer = load_base(str(base))
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config(model, LoraConfig(rank=4, alpha=8, dropout=0.0)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would make the merge trivially exact
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def logits_before_and_after_merge(base, tmp_path):
    from transformers import AutoModelForCausalLM

    from talelab.finetune.base import load_finetuned

    adapter = make_adapter(base, tmp_path / "adapter")
    summary = merge_adapter(adapter, tmp_path / "merged")
    unmerged, tokenizer = load_finetuned(adapter)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    with torch.no_grad():
        logits = [m.eval()(input_ids=ids).logits[:, :, :original.config.vocab_size]
                  for m in (unmerged, merged, original)]
    return summary, *logits


def test_merged_llama_gives_the_adapters_logits(stories260k_hf, tmp_path):
    summary, unmerged, merged, original = logits_before_and_after_merge(stories260k_hf, tmp_path)
    difference = (unmerged - merged).abs().max().item()
    print(f"stories260K: merged vs unmerged max |logit difference| {difference:.2e}; adapter moved logits by "
          f"{(unmerged - original).abs().max().item():.2f}")
    assert difference <= 1e-4
    assert (unmerged - original).abs().max().item() > 1e-2  # the adapter really changes the model
    assert summary["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                "down_proj"])


@pytest.mark.slow
def test_merged_gpt2_conv1d_gives_the_adapters_logits(gpt2_small, tmp_path):
    summary, unmerged, merged, original = logits_before_and_after_merge(gpt2_small, tmp_path)
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["fan_in_fan_out"] is True  # GPT-2's c_attn / c_proj are Conv1D: weights stored (in, out)
    difference = (unmerged - merged).abs().max().item()
    print(f"gpt2-small: merged vs unmerged max |logit difference| {difference:.2e}")
    assert difference <= 1e-4
    assert (unmerged - original).abs().max().item() > 1e-2


def test_merge_command_writes_a_standalone_model_with_tokenizer(stories260k_hf, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = make_adapter(stories260k_hf, tmp_path / "adapter", seed=1)
    assert main(["merge", "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["base"] == str(stories260k_hf)
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "talelab-merge.json"} <= files
    assert "adapter_config.json" not in files  # no peft needed to load it
    card = (tmp_path / "merged" / "README.md").read_text()  # the model card names the base it was merged into
    assert f'base_model: "{stories260k_hf}"' in card and "talelab merge --config config.yaml" in card
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer("Once")["input_ids"]


def test_adapter_directory_without_adapter_config_is_a_one_line_error(stories260k_hf, tmp_path, capsys):
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    assert main(["merge", "--adapter", str(empty), "--out", str(tmp_path / "merged")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "adapter_config.json" in error and str(empty) in error
    (empty / "adapter_config.json").write_text('{"r": 4}')
    with pytest.raises(InputError, match="base_model_name_or_path"):
        merge_adapter(empty, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
