"""Domain-adaptive pretraining on the sonnets, then instruction SFT on the Dolly subset; a talelab model trained from
scratch fine-tuned with the same command; resume continues the loss curve."""

from __future__ import annotations

import json
import math

import pytest

from talelab.cli import main
from talelab.finetune.base import load_finetuned
from talelab.finetune.formats import clean_sonnets
from talelab.finetune.sft import finetune


def test_clean_sonnets_drops_headings_and_line_numbers(shared):
    poems = clean_sonnets((shared / "data/poetry/shakespeare-sonnets.txt").read_text(encoding="utf-8"))
    assert len(poems) == 154
    assert poems[0].split("\n")[:2] == ["From fairest creatures we desire increase,",
                                        "That thereby beauty's rose might never die,"]
    assert poems[0].split("\n")[4] == "But thou, contracted to thine own bright eyes,"  # its ' 5' is gone
    text = "\n".join(poems)
    assert "SONNET" not in text and not any(ch.isdigit() for ch in text)
    assert all(12 <= len(p.split("\n")) <= 15 for p in poems)


@pytest.mark.slow
def test_dapt_on_sonnets_then_instruction_sft_on_dolly(gpt2_small, quick, tmp_path):
    dapt = finetune(quick(base=str(gpt2_small), task="lm", data="data/poetry/shakespeare-sonnets.txt",
                          out=str(tmp_path / "dapt"), max_steps=8, lr=1e-2, eval_fraction=0.05), log=lambda _: None)
    assert dapt["train_examples"] + dapt["held_out_examples"] == 154
    assert dapt["eval_loss"] < dapt["eval_loss_before"]
    lines = []
    sft = finetune(quick(base=str(tmp_path / "dapt"), task="instruct", data="data/instruct/dolly-subset.jsonl",
                         out=str(tmp_path / "sft"), max_steps=8, lr=1e-2, batch_size=4, eval_fraction=0.05,
                         samples=4, max_new_tokens=24), log=lines.append)
    print(f"\nDAPT on sonnets: held-out loss {dapt['eval_loss_before']:.3f} -> {dapt['eval_loss']:.3f}; Dolly SFT: "
          f"{sft['eval_loss_before']:.3f} -> {sft['eval_loss']:.3f}, perplexity {sft['perplexity']:.1f}, BLEU "
          f"{sft['bleu']:.2f} on {sft['answers']} held-out answers")
    assert sft["eval_loss"] < sft["eval_loss_before"]
    assert math.isclose(sft["perplexity"], math.exp(sft["eval_loss"]))
    assert sft["answers"] == 4 and 0.0 <= sft["bleu"] <= 100.0
    assert "template alpaca, loss on answers only" in "\n".join(lines)
    assert (tmp_path / "sft" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_talelab_model_from_scratch_is_fine_tuned_by_the_same_command(tiny_run, prepared, tmp_path, capsys):
    out = tmp_path / "tiny-ft"
    code = main(["finetune", "--base", str(tiny_run), "--task", "lm", "--data", str(prepared / "train.jsonl"),
                 "--out", str(out), "--max-steps", "8", "--batch-size", "8", "--max-length", "64", "--lr", "1e-2",
                 "--logging-steps", "2", "--samples", "0", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads(printed[printed.index("{"):])
    assert summary["steps"] == 8 and summary["eval_loss"] < summary["eval_loss_before"]
    assert "exported from the talelab model" in printed
    assert (tiny_run.parent / "tiny.hf-export" / "config.json").is_file()
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss.png").is_file()
    assert "library_name: \"peft\"" in (out / "README.md").read_text()  # the adapter's model card


@pytest.mark.slow
def test_resume_continues_the_loss_curve(stories260k_hf, prepared, quick, tmp_path):
    settings = dict(base=str(stories260k_hf), task="lm", data=str(prepared / "train.jsonl"), eval_fraction=0.0,
                    max_steps=8, batch_size=4, max_length=64, lr=5e-3, lora={"dropout": 0.1}, save_steps=4)

    def losses(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    finetune(quick(out=str(tmp_path / "straight"), **settings), log=lambda _: None)
    halted = finetune(quick(out=str(tmp_path / "halves"), stop_at_step=4, **settings), log=lambda _: None)
    assert halted["stopped_at_step"] == 4 and not (tmp_path / "halves" / "adapter_config.json").exists()
    resumed = finetune(quick(out=str(tmp_path / "halves"), resume=True, **settings), log=lambda _: None)
    assert resumed["steps"] == 8 and resumed["stopped_at_step"] is None
    straight, halves = losses(tmp_path / "straight"), losses(tmp_path / "halves")
    assert sorted(halves) == list(range(1, 9))
    for step in range(5, 9):  # optimizer, scheduler, data order and dropout RNG all came back
        assert abs(straight[step] - halves[step]) < 1e-4, (step, straight[step], halves[step])


@pytest.mark.slow
def test_full_fine_tuning_trains_every_parameter_and_saves_a_whole_model(stories260k_hf, prepared, quick, tmp_path):
    out = tmp_path / "full"
    summary = finetune(quick(base=str(stories260k_hf), task="lm", data=str(prepared / "train.jsonl"), out=str(out),
                             full=True, max_steps=4, batch_size=4, max_length=64, lr=1e-3), log=lambda _: None)
    assert summary["trainable_percent"] == 100.0
    assert summary["trainable_params"] == summary["total_params"]
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    model, tokenizer = load_finetuned(out)
    assert sum(p.numel() for p in model.parameters()) == summary["total_params"]
