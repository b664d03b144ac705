"""LoRA stories-tags SFT of stories260K on the shared TinyStories text: features derived by rules, or as labelled in
a prepared all_data directory."""

from __future__ import annotations

import json
import math

import pytest

from talelab.finetune.base import load_finetuned
from talelab.finetune.sft import evaluate_untrained, finetune
from talelab.models.storage import load_model


@pytest.mark.slow
def test_stories_tags_lora_lowers_held_out_loss_and_dialogue_follows_the_tag(stories260k_hf, quick, tmp_path):
    out = tmp_path / "tags"
    lines = []
    summary = finetune(quick(base=str(stories260k_hf), task="stories-tags", data="data/tinystories/train-head.txt",
                             out=str(out), max_examples=240, eval_fraction=0.02, max_steps=30, lr=1e-2,
                             max_length=160, derive_words=3, samples=16, max_new_tokens=100, temperature=0.7),
                       log=lines.append)
    adherence = summary["adherence"]
    print(f"\nstories-tags on stories260K, 30 steps: held-out loss {summary['eval_loss_before']:.4f} -> "
          f"{summary['eval_loss']:.4f}; dialogue with Dialogue requested {adherence['dialogue_rate_with_dialogue']:.2f}"
          f", without {adherence['dialogue_rate_without_features']:.2f} ({adherence['samples']} stories each); "
          f"required words used {adherence['required_words_used']:.2f}")
    assert summary["eval_loss"] < summary["eval_loss_before"]
    assert adherence["dialogue_rate_with_dialogue"] > adherence["dialogue_rate_without_features"]
    assert 0 <= adherence["required_words_used"] <= 1 and adherence["required_words"]
    # the run log says where the features came from, and how many parameters LoRA trains
    log = (out / "log.txt").read_text(encoding="utf-8")
    assert "derived by rules, here or by prepare --tag-rules (Dialogue, MoralValue only" in log
    assert "trainable params: 46,240 || all params: 306,272 || trainable%: 15.0977" in log
    assert lines == log.splitlines()
    # the adapter, tokenizer, metrics and chart are where a user (and talelab's loaders) look for them
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "metrics.jsonl", "loss.png",
                 "lr.png"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 31))
    assert max(r["learning_rate"] for r in rows if "loss" in r) > 0  # what lr.png draws
    model, tokenizer = load_finetuned(out)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == 46_240
    talelab_model, talelab_tokenizer, _ = load_model(out)  # what generate, eval and serve load
    assert talelab_tokenizer.encode("Once upon a time") == tokenizer("Once upon a time")["input_ids"]


@pytest.mark.slow
def test_a_prepared_directory_with_labels_fine_tunes_and_the_log_says_as_labelled(stories260k_hf, quick,
                                                                                   tagged_all_data, tmp_path):
    _, prepared = tagged_all_data
    out = tmp_path / "labelled"
    summary = finetune(quick(base=str(stories260k_hf), task="stories-tags", data=str(prepared), out=str(out),
                             max_steps=2), log=lambda line: None)
    assert summary["train_examples"] + summary["held_out_examples"] == 25 and summary["steps"] == 2
    note = f"features: as labelled in {prepared / 'train.jsonl'} (25 stories)"
    assert summary["data_note"] == note and note in (out / "log.txt").read_text(encoding="utf-8").splitlines()


@pytest.mark.slow
def test_the_base_model_measured_untrained_on_one_story_gives_one_perplexity_both_ways(stories260k_hf, quick,
                                                                                        tmp_path):
    # one held-out story: the mean over examples of exp(loss) is exp(eval_loss), if both score the same tokens (the
    # story, not its Features prompt) the same way
    summary = evaluate_untrained(quick(base=str(stories260k_hf), task="stories-tags", out=str(tmp_path / "base"),
                                       data="data/tinystories/train-head.txt", eval_fraction=0.0004),
                                 log=lambda line: None)
    assert summary["held_out_examples"] == 1 and summary["steps"] == 0 and summary["trainable_percent"] == 0
    assert summary["mean_example_perplexity"] == pytest.approx(summary["perplexity"], rel=1e-4)
    assert summary["perplexity"] == pytest.approx(math.exp(summary["eval_loss"]))
    assert json.loads((tmp_path / "base" / "summary.json").read_text(encoding="utf-8"))["eval_loss"] == \
        summary["eval_loss"]
    assert not (tmp_path / "base" / "adapter_model.safetensors").exists()  # nothing trained, nothing saved
