"""`talelab trials`: a grid of LoRA configurations on the Dolly subset, one table with the base model untuned as its
first row, finished trials not redone."""

from __future__ import annotations

import csv
import json
import math

import pytest

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
