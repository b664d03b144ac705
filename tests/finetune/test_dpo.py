"""`talelab dpo`: LoRA DPO on stories260K (Hugging Face form) with story pairs and Anthropic HH pairs; the reference
is the base with the adapter disabled; held-out reward accuracy rises above chance and margins grow; resume; bad input.

The HH prompts are red-teaming dialogues: these tests print figures, never their text.
"""

from __future__ import annotations

import dataclasses

import gzip
import json
import math
import shutil

import pytest
import torch

from talelab.cli import main
from talelab.config import PreferenceConfig, PrefsConfig
from talelab.errors import ConfigError, InputError
from talelab.finetune.dpo import make_trainer, read_pairs, run_dpo, split_dialogue
from talelab.finetune.prefs import build_pairs

HH_PAIRS = "data/preference/hh-rlhf-harmless-test.jsonl.gz"


def quick(base, data, out, **overrides) -> PreferenceConfig:
    """A CI-sized run: short sequences, a high LoRA learning rate, a handful of steps, no progress bar."""
    values = dict(base=str(base), data=str(data), out=str(out), lr=2e-3, batch_size=8, epochs=2, max_length=128,
                  heldout_fraction=0.2, eval_steps=4, save_steps=4, progress=False)
    return PreferenceConfig(**{**values, **overrides})


def heldout_curve(out) -> list[tuple[int, float, float]]:
    """(step, held-out accuracy, held-out margin) of every evaluation in metrics.jsonl, in order."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["eval_rewards/accuracies"], r["eval_rewards/margins"]) for r in records
            if "eval_rewards/margins" in r]


@pytest.fixture(scope="module")
def story_pairs(tmp_path_factory, prepared):
    """60 shuffle-rejection story pairs from the prepared stories (`talelab prefs build`)."""
    out = tmp_path_factory.mktemp("prefs") / "pairs.jsonl"
    build_pairs(PrefsConfig(data=str(prepared), out=str(out), rejected="shuffle", max_pairs=60, progress=False))
    return out


@pytest.fixture(scope="module")
def story_run(tmp_path_factory, stories260k_hf, story_pairs):
    out = tmp_path_factory.mktemp("dpo") / "stories"
    return out, run_dpo(quick(stories260k_hf, story_pairs, out), log=lambda *_: None)


@pytest.mark.slow
def test_story_pairs_heldout_accuracy_rises_above_chance_and_margins_grow(story_run):
    out, summary = story_run
    curve = heldout_curve(out)
    print("story pairs (step, held-out accuracy, margin):", [(s, round(a, 3), round(m, 4)) for s, a, m in curve])
    assert summary["heldout_before"]["margin"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 0
    assert summary["heldout_after"]["accuracy"] > 0.5
    margins = [m for _, _, m in curve]
    assert margins[-1] > margins[1] > margins[0] >= -1e-6
    assert summary["heldout_after"]["margin"] == pytest.approx(margins[-1])


def test_run_writes_adapter_metrics_plot_and_report(story_run):
    out, summary = story_run
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "adapter" / "tokenizer.json").is_file()
    assert (out / "dpo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| accuracy |" in report and f"{summary['heldout_after']['accuracy']:.4f}" in report
    assert summary["train_pairs"] + summary["heldout_pairs"] + summary["dropped_by_max_length"] == 60
    assert summary["steps"] == 2 * math.ceil(summary["train_pairs"] / 8)  # two epochs of batches of 8
    assert json.loads((out / "summary.json").read_text())["steps"] == summary["steps"]


def checkpoint_steps(out) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*"))


@pytest.mark.slow
def test_resume_from_a_checkpoint_ends_where_the_uninterrupted_run_ended(story_run, tmp_path):
    out, summary = story_run
    *earlier, last = checkpoint_steps(out)
    assert last == summary["steps"] and earlier
    copy = tmp_path / "resumed"  # the run as if killed just before its last checkpoint
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(f"checkpoint-{last}", "adapter"))
    config = quick(summary["base"], summary["data"], copy)
    with pytest.raises(ConfigError, match="--resume"):
        run_dpo(config, log=lambda *_: None)
    resumed = run_dpo(dataclasses.replace(config, resume=True), log=lambda *_: None)
    assert resumed["steps"] == last and resumed["heldout_before"] == summary["heldout_before"]
    for name, value in summary["heldout_after"].items():
        assert resumed["heldout_after"][name] == pytest.approx(value, abs=1e-5), name
    assert [s for s, _, _ in heldout_curve(copy)] == [s for s, _, _ in heldout_curve(out)]


@pytest.mark.slow
def test_reference_is_the_base_with_the_adapter_disabled_not_a_second_copy(stories260k_hf, story_pairs, tmp_path):
    from peft import PeftModel

    from talelab.finetune.base import load_base

    trainer, _ = make_trainer(quick(stories260k_hf, story_pairs, tmp_path / "ref", max_pairs=24, eval_steps=100))
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    base, _ = load_base(str(stories260k_hf))
    lora = sum(p.numel() for n, p in trainer.model.named_parameters() if "lora_" in n)
    assert sum(p.numel() for p in trainer.model.parameters()) == sum(p.numel() for p in base.parameters()) + lora
    trainer.train()  # the adapter moves away from zero
    batch = trainer.data_collator([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])
    reference = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))

    def completion_logps(model):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (token_logps * batch["completion_mask"][:, 1:]).sum(-1)

    assert torch.allclose(reference, completion_logps(base.eval()), atol=1e-3)
    assert (completion_logps(trainer.model.eval()) - reference).abs().max() > 1e-2  # the policy has moved


@pytest.mark.slow
def test_hh_pairs_heldout_accuracy_rises_above_chance_and_margins_grow(stories260k_hf, shared, tmp_path):
    # the shortest dialogues, so that prompt and response fit 96 tokens of a 512-piece tokenizer
    with gzip.open(shared / HH_PAIRS, "rt", encoding="utf-8") as f:
        rows = [line for line in f if len(json.loads(line)["chosen"]) < 300][:360]
    data = tmp_path / "hh-short.jsonl"
    data.write_text("".join(rows), encoding="utf-8")
    out = tmp_path / "hh"
    summary = run_dpo(quick(stories260k_hf, data, out, lr=3e-4, epochs=1, max_length=96, heldout_fraction=0.15,
                            eval_steps=16, save_steps=1000), log=lambda *_: None)
    curve = heldout_curve(out)
    print(f"HH pairs: {summary['train_pairs']} training, {summary['heldout_pairs']} held out; (step, accuracy, "
          f"margin):", [(s, round(a, 3), round(m, 4)) for s, a, m in curve])
    assert summary["heldout_after"]["accuracy"] > 0.5
    assert curve[-1][2] > max(curve[1][2], 0.0)  # the margin at the end exceeds the first evaluation's


def test_hh_dialogues_split_at_the_last_shared_assistant_turn():
    prompt = "\n\nHuman: Tell me a story.\n\nAssistant: About what?\n\nHuman: A cat.\n\nAssistant:"
    chosen, rejected = " A cat slept.", " No.\n\nHuman: Please?\n\nAssistant: Fine."  # a response may hold turns
    assert split_dialogue(prompt + chosen, prompt + rejected) == (prompt, chosen, rejected)
    assert split_dialogue("\n\nHuman: hi", "\n\nHuman: hello") is None


def test_rows_without_prompt_chosen_rejected_name_file_and_line(tmp_path, capsys, stories260k_hf):
    data = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "Once upon a time", "chosen": " a cat sat.", "rejected": " sat a cat."})
    data.write_text(good + "\n" + good + "\n" + json.dumps({"prompt": "Once", "chosen": " a cat."}) + "\n")
    with pytest.raises(InputError, match=r"pairs\.jsonl:3: .*missing or not text: rejected"):
        read_pairs(str(data))
    assert main(["dpo", "--base", str(stories260k_hf), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"{data}:3" in error
    data.write_text(good + "\n" + json.dumps({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: yo"}) + "\n")
    with pytest.raises(InputError, match=r"pairs\.jsonl:2: .*Assistant"):
        read_pairs(str(data))
    data.write_text(good + "\n[1, 2]\n")
    with pytest.raises(InputError, match=r"pairs\.jsonl:2: expected a JSON object"):
        read_pairs(str(data))


def test_real_hh_file_reads_as_prompt_chosen_rejected(shared):
    pairs = read_pairs(HH_PAIRS, data_root=shared)
    assert len(pairs) == 2312
    assert all(p["prompt"].endswith("\n\nAssistant:") and p["prompt"].startswith("\n\nHuman:") for p in pairs)


def test_missing_base_or_resume_without_checkpoint_is_a_one_line_error(tmp_path, capsys, story_pairs):
    assert main(["dpo", "--data", str(story_pairs), "--out", str(tmp_path / "o")]) == 2
    assert "--base" in capsys.readouterr().err
    with pytest.raises(InputError, match="no checkpoint to resume"):
        run_dpo(PreferenceConfig(base="x", data=str(story_pairs), out=str(tmp_path / "o"), resume=True))


ULTRAFEEDBACK = ("instruction", "chosen_response", "rejected_response")


def test_ultrafeedback_columns_read_as_the_hh_pairs_they_were_renamed_from(shared, tmp_path, capsys):
    pairs = read_pairs(HH_PAIRS, data_root=shared)[:30]
    data = tmp_path / "ultrafeedback.jsonl"  # argilla/ultrafeedback-binarized-preferences' column names
    data.write_text("".join(json.dumps(dict(zip(ULTRAFEEDBACK, (p["prompt"], p["chosen"], p["rejected"]))))
                            + "\n" for p in pairs), encoding="utf-8")
    assert read_pairs(str(data), fields=ULTRAFEEDBACK) == pairs
    with pytest.raises(InputError, match=r"ultrafeedback\.jsonl:1: .*missing or not text: prompt, chosen, rejected"):
        read_pairs(str(data))  # today's names by default
    config = PreferenceConfig(base="b", data=str(data), prompt_field="instruction", chosen_field="chosen_response",
                              rejected_field="rejected_response")
    assert (config.prompt_field, config.chosen_field, config.rejected_field) == ULTRAFEEDBACK
    with pytest.raises(ConfigError, match="three different fields"):
        PreferenceConfig(base="b", data="d", chosen_field="prompt")
    renamed = tmp_path / "hh-renamed.jsonl"  # HH dialogues under other names: the prompt is still split off
    renamed.write_text("".join(json.dumps({"good": p["prompt"] + p["chosen"], "bad": p["prompt"] + p["rejected"]})
                               + "\n" for p in pairs), encoding="utf-8")
    assert read_pairs(str(renamed), fields=("instruction", "good", "bad")) == pairs
    assert main(["dpo", "--base", "b", "--data", str(data), "--out", str(tmp_path / "o"), "--chosen-field", "best",
                 "--prompt-field", "instruction", "--rejected-field", "rejected_response"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and f"{data}:1:" in error and "missing or not text: best" in error
