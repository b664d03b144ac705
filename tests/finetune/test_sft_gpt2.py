"""The GPT-2 code path on a small GPT-2 with the real tokenizer: pad != EOS, padding masked, EOS learned, LoRA on
c_attn/c_proj (Conv1D)."""

from __future__ import annotations

import json

import pytest
import torch

from talelab.data.sentences import split_sentences
from talelab.data.sources import read_documents
from talelab.finetune.base import load_base, load_finetuned
from talelab.finetune.sft import finetune, prepare_run


def first_sentences(shared, path, count=240):
    """The first sentence of each of the first `count` shared stories: short documents that end in EOS."""
    stories = read_documents(shared / "data/tinystories/train-head.txt")[:count]
    path.write_text("".join(json.dumps({"text": split_sentences(s)[0]}) + "\n" for s in stories), encoding="utf-8")
    return path


def eos_log_prob(model, tokenizer, sentences: list[str]) -> float:
    """Mean log-probability of EOS right after each sentence (with BOS before it)."""
    total = 0.0
    with torch.no_grad():
        for s in sentences:
            ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(s)["input_ids"]])
            total += torch.log_softmax(model(ids).logits[0, -1], -1)[tokenizer.eos_token_id].item()
    return total / len(sentences)


@pytest.mark.slow
def test_gpt2_pad_is_not_eos_padding_is_masked_and_lora_wraps_conv1d(gpt2_small, shared, quick, tmp_path):
    data = first_sentences(shared, tmp_path / "first.jsonl")
    lines = []
    run = prepare_run(quick(base=str(gpt2_small), task="lm", data=str(data), out=str(tmp_path / "look"),
                            lora={"rank": 4}), log=lines.append)
    tokenizer = run.tokenizer
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id == 50257 != tokenizer.eos_token_id
    assert run.trainer.model.get_input_embeddings().weight.shape[0] == len(tokenizer) == 50258
    assert "added pad token '<|pad|>' (id 50257); embeddings resized to 50258" in lines[0]
    batch = next(iter(run.trainer.get_train_dataloader()))
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (mask == 0).any(), "rows of different lengths: some padding to check"
    assert (ids[mask == 0] == tokenizer.pad_token_id).all() and (labels[mask == 0] == -100).all()
    last = mask.sum(1) - 1
    assert (labels[torch.arange(len(ids)), last] == tokenizer.eos_token_id).all(), "EOS ends every row and is a target"
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    wrapped = {name.rsplit(".", 1)[-1] for name, m in run.trainer.model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"c_attn", "c_proj"}
    assert run.trainer.model.peft_config["default"].fan_in_fan_out
    assert any("LoRA r=4 alpha=8.0 on c_attn, c_proj: trainable params:" in line for line in lines)


@pytest.mark.slow
def test_gpt2_lora_learns_eos_and_generation_stops_there(gpt2_small, shared, quick, tmp_path):
    data = first_sentences(shared, tmp_path / "first.jsonl")
    held_out = [json.loads(line)["text"] for line in data.read_text().splitlines()[-20:]]
    out = tmp_path / "eos"
    base, base_tokenizer = load_base(str(gpt2_small))
    before = eos_log_prob(base, base_tokenizer, held_out)
    summary = finetune(quick(base=str(gpt2_small), task="lm", data=str(data), out=str(out), max_examples=200,
                             max_steps=25, lr=1e-2, max_length=48), log=lambda _: None)
    model, tokenizer = load_finetuned(out)
    after = eos_log_prob(model, tokenizer, held_out)
    print(f"\nGPT-2 path: mean log p(EOS | held-out first sentence) {before:.3f} -> {after:.3f}; held-out loss "
          f"{summary['eval_loss_before']:.3f} -> {summary['eval_loss']:.3f}")
    assert after > before + 1.0
    assert summary["eval_loss"] < summary["eval_loss_before"]
    prompt = torch.tensor([[tokenizer.bos_token_id]] * 4)
    torch.manual_seed(0)
    generated = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                               max_new_tokens=60, pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.eos_token_id)
    for row in generated[:, 1:].tolist():
        assert tokenizer.eos_token_id in row, "every sample ends at EOS within 60 tokens"
        end = row.index(tokenizer.eos_token_id)
        assert all(t == tokenizer.pad_token_id for t in row[end + 1:])  # after EOS only padding


def test_lora_on_gpt2_c_attn_alone_trains_under_0_3_percent_of_gpt2():
    """The poetry study's "<0.3 %": rank 8 on c_attn alone is 12 layers x 8 x (768 + 2304) = 294,912 parameters
    beside GPT-2's 124,439,808 (built on the meta device: shapes without weights)."""
    from peft import get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from talelab.config import LoraConfig
    from talelab.finetune.base import lora_config, trainable_summary

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())  # GPT-2 small's shape
    peft_config = lora_config(model, LoraConfig(rank=8, target_modules="c_attn"))
    assert peft_config.target_modules == {"c_attn"}
    trainable, total, percent = trainable_summary(get_peft_model(model, peft_config))
    assert (trainable, total) == (12 * 8 * (768 + 2304), 124_439_808 + 294_912)
    assert round(percent, 4) == 0.2364
