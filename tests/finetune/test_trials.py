"""`talelab trials`: LoRA configurations on the Dolly subset, a grid or a list of named trials (SFT or DPO), one
table with the base model untuned as its first row, finished trials not redone; bad trial lists are one line."""

from __future__ import annotations

import csv
import gzip
import json
import math

import pytest
import yaml

from talelab.cli import main


@pytest.mark.slow
def test_trials_write_their_table_and_are_not_redone(stories260k_hf, tmp_path, capsys):
    out = tmp_path / "trials"
    argv = ["trials", "--grid", "rank=2,4 lr=2e-3", "--out", str(out), "--base", str(stories260k_hf),
            "--task", "instruct", "--data", "data/instruct/dolly-subset.jsonl", "--max-steps", "3",
            "--batch-size", "4", "--max-length", "256", "--eval-fraction", "0.05", "--samples", "2",
            "--max-new-tokens", "12", "--no-progress"]
    assert main(argv) == 0
    base, *rows = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    assert [r["trial"] for r in sorted(rows, key=lambda r: r["lora_rank"])] == ["rank=2_lr=0.002", "rank=4_lr=0.002"]
    for r in rows:
        assert r["steps"] == "3" and float(r["train_loss"]) > 0 and float(r["val_loss"]) > 0
        assert float(r["perplexity"]) > 1 and 0 <= float(r["bleu"]) <= 100 and float(r["wall_time_s"]) > 0
        assert float(r["mean_example_perplexity"]) > 1
        assert float(r["lora_alpha"]) == 2 * int(r["lora_rank"])  # alpha = 2r when not given
    rank2, rank4 = sorted(rows, key=lambda r: int(r["lora_rank"]))
    assert float(rank4["trainable_percent"]) > float(rank2["trainable_percent"])
    # the base row: nothing trained, measured as each trial measured its starting point before training
    assert base["trial"] == "base (untuned)" and base["steps"] == "0" and float(base["trainable_percent"]) == 0
    assert base["lora_rank"] == base["train_loss"] == "" and 0 <= float(base["bleu"]) <= 100
    before = json.loads((out / "rank=2_lr=0.002" / "summary.json").read_text(encoding="utf-8"))["eval_loss_before"]
    assert float(base["val_loss"]) == round(before, 4)
    assert float(base["perplexity"]) == pytest.approx(math.exp(before), abs=1e-3)
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| trial | rank | alpha |" in table and table.count("| rank=") == 2
    assert table.index("| base (untuned) |") < table.index("| rank=") and "mean perplexity" in table
    assert (out / "results.png").is_file()
    capsys.readouterr()
    assert main(argv) == 0  # again: both trials and the base are read back, none retrained or measured again
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, not redone") == 2 and "base model: measured earlier" in printed
    assert main(argv + ["--no-base-row"]) == 0
    assert "base (untuned)" not in (out / "results.md").read_text(encoding="utf-8")


def write_yaml(path, values: dict):
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def short_questions(shared, path, count=2):
    """The Dolly rows with the shortest prompts, as a question set: room for an answer in a tiny context."""
    rows = [json.loads(line) for line in (shared / "data/instruct/dolly-subset.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in sorted(rows, key=lambda r: len(r["prompt"]))[:count]),
                    encoding="utf-8")
    return path


@pytest.mark.slow
def test_a_trials_list_runs_each_trial_under_its_name_in_order(stories260k_hf, shared, tmp_path, capsys):
    out = tmp_path / "listed"
    config = write_yaml(tmp_path / "trials.yaml", {
        "finetune": {"base": str(stories260k_hf), "task": "instruct", "data": "data/instruct/dolly-subset.jsonl",
                     "max_steps": 2, "max_length": 256, "eval_fraction": 0.05, "samples": 0, "max_new_tokens": 8,
                     "questions": str(short_questions(shared, tmp_path / "q.jsonl")), "progress": False},
        "trials": [{"name": "t2", "rank": 4, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj",
                                                                                              "k_proj", "o_proj"],
                    "lr": "1e-3", "batch_size": 8, "epochs": 2},
                   {"name": "t1", "rank": 2, "alpha": 8, "dropout": 0.05, "target_modules": "q_proj,v_proj",
                    "lr": 2e-3, "batch_size": 4, "epochs": 1}]})
    argv = ["trials", "--config", str(config), "--out", str(out)]
    assert main(argv) == 0
    base, t2, t1 = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    assert (base["trial"], t2["trial"], t1["trial"]) == ("base (untuned)", "t2", "t1")  # as listed, not by loss
    assert (t2["lora_rank"], t2["lora_alpha"], t2["lora_dropout"], t2["target_modules"], t2["lr"], t2["batch_size"],
            t2["epochs"]) == ("4", "32.0", "0.1", "q_proj,v_proj,k_proj,o_proj", "0.001", "8", "2.0")
    assert (t1["lora_rank"], t1["target_modules"], t1["batch_size"]) == ("2", "q_proj,v_proj", "4")
    for row, folder in ((base, "base"), (t2, "t2"), (t1, "t1")):  # every model answered the same questions
        assert 0 <= float(row["question_bleu"]) <= 100 and float(row["question_perplexity"]) > 1
        answers = (out / folder / "answers.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(answers) == 2
    assert "test_loss" not in t1  # no test split: no empty column
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "| questions BLEU | questions perplexity |" in table and "in the order listed" in table
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "trial 1/2 t2: finished earlier, not redone" in printed and printed.count("not redone") == 3


@pytest.mark.slow
def test_dpo_trials_compare_beta_and_lora_settings_with_the_base(stories260k_hf, shared, tmp_path):
    from talelab.finetune.dpo import split_dialogue

    with gzip.open(shared / "data/preference/hh-rlhf-harmless-test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [r for r in map(json.loads, f) if len(r["chosen"]) < 300][:40]
    pairs = tmp_path / "ultrafeedback.jsonl"  # UltraFeedback's column names
    pairs.write_text("".join(json.dumps(dict(zip(("instruction", "chosen_response", "rejected_response"),
                                                 split_dialogue(r["chosen"], r["rejected"])))) + "\n" for r in rows),
                     encoding="utf-8")
    out = tmp_path / "dpo-trials"
    config = write_yaml(tmp_path / "dpo.yaml", {
        "method": "dpo",
        "dpo": {"base": str(stories260k_hf), "data": str(pairs), "prompt_field": "instruction",
                "chosen_field": "chosen_response", "rejected_field": "rejected_response", "max_length": 96,
                "heldout_fraction": 0.2, "progress": False},
        "trials": [{"name": "t1", "rank": 4, "alpha": 16, "target_modules": "q_proj,v_proj", "dropout": 0.15,
                    "beta": 0.1, "lr": 5e-4, "batch_size": 8, "epochs": 1, "grad_accum": 2},
                   {"name": "t2", "rank": 2, "alpha": 8, "target_modules": "q_proj,v_proj,k_proj", "dropout": 0.1,
                    "beta": 0.2, "lr": 5e-4, "batch_size": 4, "epochs": 1, "grad_accum": 2}]})
    assert main(["trials", "--config", str(config), "--out", str(out)]) == 0
    base, t1, t2 = list(csv.DictReader((out / "results.csv").open(encoding="utf-8")))
    assert base["trial"] == "base (untuned)" and base["steps"] == "0"
    assert float(base["val_loss"]) == round(math.log(2), 4) and float(base["reward_accuracy"]) == 0  # policy = ref
    assert (t1["beta"], t2["beta"], t1["grad_accum"]) == ("0.1", "0.2", "2")
    assert t2["target_modules"] == "q_proj,v_proj,k_proj"
    for row in (t1, t2):
        summary = json.loads((out / row["trial"] / "summary.json").read_text(encoding="utf-8"))
        assert int(row["steps"]) == summary["steps"] > 0 and summary["config"]["beta"] == float(row["beta"])
        assert float(row["trainable_percent"]) == round(summary["trainable_percent"], 4) > 0
        assert float(row["reward_accuracy"]) == round(summary["heldout_after"]["accuracy"], 4)
        assert (out / row["trial"] / "adapter" / "adapter_config.json").is_file()
    assert (out / "results.md").read_text(encoding="utf-8").startswith("# DPO trials on ultrafeedback.jsonl")


@pytest.mark.parametrize("values, message", [
    ({"trials": [{"rank": 4}]}, "trials: list entry 0: each trial must be a mapping with a 'name'"),
    ({"trials": [{"name": "base", "rank": 4}]}, "other than 'base'"),
    ({"trials": [{"name": "a"}, {"name": "a"}]}, "two trials share a name"),
    ({"grid": "rank=2", "trials": [{"name": "a"}]}, "not both"),
    ({"method": "dpo", "dpo": {"base": "b"}}, "--dpo-base and --dpo-data"),
])
def test_bad_trial_lists_are_one_line_errors(tmp_path, capsys, values, message):
    config = write_yaml(tmp_path / "bad.yaml", {"finetune": {"base": "b"}, **values})
    assert main(["trials", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_an_unknown_trial_key_names_the_trial_before_anything_runs(tmp_path, capsys):
    config = write_yaml(tmp_path / "typo.yaml", {"finetune": {"base": "nowhere"},
                                                 "trials": [{"name": "t1", "rank": 4}, {"name": "t2", "rnak": 8}]})
    assert main(["trials", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "trial t2: unknown key 'rnak'" in error
    assert not (tmp_path / "o").exists()  # checked before the first trial (or the base row) started
