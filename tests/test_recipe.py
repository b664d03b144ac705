"""`talelab recipe run`: recipe files checked with one-line errors, stages run in order and skipped once finished,
an interrupted stage resumed, and the report's cells read and compared as computed by hand here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from talelab.errors import ConfigError
from talelab.recipe.book import available, load_recipe
from talelab.recipe.report import NotMeasured, agreement, concordance, in_percent, measured_value, number, shown
from talelab.recipe.runner import run_recipe


def talelab(*args: str, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "talelab", *args], capture_output=True, text=True, **options)


def write_recipe(path: Path, stages: list[dict], tables: list[dict] | None = None) -> Path:
    tables = tables if tables is not None else [{"number": "Table 1", "title": "t", "columns": ["a"],
                                                 "rows": [{"label": "x", "published": [1]}]}]
    path.write_text(yaml.safe_dump({"study": "s.txt", "title": "A study", "stages": stages, "tables": tables}),
                    encoding="utf-8")
    return path


CORPUS = {"name": "corpus", "command": "prepare", "note": "clean and split",
          "config": {"source": "data/tinystories/train-head.txt", "format": "eot", "out": "${out}/corpus",
                     "max_documents": 60},
          "scale": {"smoke": {"max_documents": 40}}}
TOKENIZER = {"name": "tokenizer", "command": "tokenizer train",
             "config": {"data": "${out}/corpus", "out": "${out}/tokenizer", "kind": "bpe", "vocab_size": 300}}


def test_lookup_reads_json_keys_indices_and_row_selectors(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "r.json").write_text(json.dumps({"a": {"b": [{"name": "x", "v": 1.5}, {"name": "y", "v": 2}]}}))
    (tmp_path / "s" / "t.csv").write_text("model,2,4\nm1,\"1,204\",oom\nm2,7.5,3\n")
    assert measured_value(tmp_path, "s/r.json:a.b[name=y].v") == 2
    assert measured_value(tmp_path, "s/r.json:a.b[0].v") == 1.5
    assert measured_value(tmp_path, "s/t.csv:[model=m1].2") == 1204  # grouped thousands read as a number
    assert measured_value(tmp_path, "s/t.csv:[model=m1].4") == "oom"
    assert measured_value(tmp_path, 0.5) == 0.5  # a literal stays as it is
    (tmp_path / "s" / "c.yaml").write_text("model: {d_model: 64}\n")
    (tmp_path / "s" / "a.jsonl").write_text('{"answer": "one"}\n\n{"answer": "two"}\n')
    assert measured_value(tmp_path, "s/a.jsonl:[1].answer") == "two"
    assert measured_value(tmp_path, "s/c.yaml:model.d_model") == 64
    assert measured_value(tmp_path, {"mean": "s/r.json:a.b[0].v", "sd": "s/r.json:a.b[1].v"}) == {"mean": 1.5, "sd": 2}
    assert measured_value(tmp_path, ["s/r.json:a.b[1].name", "s/r.json:a.b[0].v"]) == "y 1.5"  # joined by a space
    assert in_percent(3, "s/r.json:a.b[0].v", tmp_path) == 200  # 3 is 200 % of 1.5
    assert in_percent("oom", "s/r.json:a.b[0].v", tmp_path) == "oom" and in_percent(3, None, tmp_path) == 3
    for missing in ("s/r.json:a.c", "s/r.json:a.b[name=z].v", "s/none.json:a", None, "s/r.json:a.b[2].v",
                    "s/r.json:a[0]", "s/r.json:a[name=x]"):
        with pytest.raises(NotMeasured):
            measured_value(tmp_path, missing)
    assert number("12") == 12 and number("1.25") == 1.25 and number("-") == "-"


def test_agreement_sentences_by_hand():
    # order: published 1 < 2 < 3, measured 10 > 5 < 20; pairs (0,1) differ, (0,2) alike, (1,2) alike -> 2 of 3
    assert concordance([1, 2, 3], [10, 5, 20]) == (2, 3)
    order = agreement({"compare": "order"}, [([1, 2, 3], [10, 5, 20])])
    assert order.startswith("Order: 2 of 3 pairs of cells are ranked alike (67 %)")
    assert "same place in 1 of 1 rows" in order
    # trend: steps +1, +1 against -5, +15 -> 1 of 2 go the same way
    assert agreement({"compare": "trend"}, [([1, 2, 3], [10, 5, 20])]).startswith("Trend: 1 of 2 steps")
    # values: |11-10|/10 = 10 %, |1.8-2|/2 = 10 %, |2-4|/4 = 50 % -> median 10 %
    assert "by 10.0 % (3 cells)" in agreement({"compare": "values"}, [([10, 2, 4], [11, 1.8, 2])])
    assert agreement({"compare": "order"}, [([1, 2], [None, None])]) == "Nothing measured at this scale to compare."
    assert shown({"mean": 2.5, "sd": 0.25}) == "2.5 ± 0.25" and shown(12345.0) == "12,345" and shown(None) == "—"


@pytest.mark.parametrize("stage, message", [
    ({"name": "a", "command": "trian"}, "unknown command 'trian'"),
    ({"name": "A b", "command": "prepare"}, "name 'A b' must be lowercase"),
    ({"name": "a", "command": "prepare", "scale": {"huge": {}}}, "unknown scale 'huge'"),
    ({"name": "a", "command": "prepare", "typo": 1}, "unknown key typo"),
])
def test_recipe_errors_name_the_file_and_stage(tmp_path, stage, message):
    path = write_recipe(tmp_path / "r.yaml", [stage])
    with pytest.raises(ConfigError, match=message) as caught:
        load_recipe(str(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_table_cells_must_fit_columns_and_come_from_stages(tmp_path):
    wide = [{"number": "T", "columns": ["a", "b"], "rows": [{"label": "x", "published": [1]}]}]
    with pytest.raises(ConfigError, match="'published' must list 2 cells"):
        load_recipe(str(write_recipe(tmp_path / "r.yaml", [CORPUS], wide)))
    stray = [{"number": "T", "columns": ["a"], "rows": [{"label": "x", "measured": ["grid/results.csv:[name=a].x"]}]}]
    with pytest.raises(ConfigError, match="read from no stage"):
        load_recipe(str(write_recipe(tmp_path / "r.yaml", [CORPUS], stray)))


def test_unknown_recipe_is_one_line_exit_2(tmp_path):
    result = talelab("recipe", "run", "no-such-study", "--dry-run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "unknown recipe 'no-such-study'" in result.stderr and "transformer-limits" in result.stderr


def test_dry_run_checks_each_stage_config_against_its_command(tmp_path, shared):
    bad = {**TOKENIZER, "config": {**TOKENIZER["config"], "vocab_sise": 300}}
    path = write_recipe(tmp_path / "r.yaml", [CORPUS, bad])
    result = talelab("recipe", "run", str(path), "--scale", "smoke", "--dry-run", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "vocab_sise" in result.stderr and "tokenizer.yaml" in result.stderr
    assert not (tmp_path / "o" / "corpus").exists()  # nothing ran


@pytest.mark.slow
def test_stages_run_once_then_skip_and_report(tmp_path, shared):
    table = [{"number": "Table 1", "title": "corpus size", "columns": ["train", "val"], "compare": "order",
              "rows": [{"label": "stories", "published": [8464, 1000],
                        "measured": ["corpus/report.json:splits.train.documents",
                                     "corpus/report.json:splits.val.documents"]}],
              "why": "a 40-story corpus"}]
    recipe = load_recipe(str(write_recipe(tmp_path / "r.yaml", [CORPUS, TOKENIZER], table)))
    out = tmp_path / "out"
    report = run_recipe(recipe, "smoke", out)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    stages = yaml.safe_load((out / "stages" / "corpus.yaml").read_text())
    assert stages["max_documents"] == 40 and stages["out"] == str(out / "corpus")  # scale merged, ${out} filled
    done = {p.name: p.stat().st_mtime for p in (out / "stages").glob("*.done.json")}
    assert set(done) == {"corpus.done.json", "tokenizer.done.json"}
    text = report.read_text()
    assert "| stories | published | 8,464 | 1,000 |" in text and "**talelab**" in text
    assert "a 40-story corpus" in text and "| corpus | talelab prepare |" in text
    measured = json.loads((out / "report.json").read_text())["tables"][0]["rows"][0]["measured"]
    assert all(isinstance(v, int) and v > 0 for v in measured)
    run_recipe(recipe, "smoke", out)  # finished stages are skipped: their markers stay as they were
    assert {p.name: p.stat().st_mtime for p in (out / "stages").glob("*.done.json")} == done
    tokenizer = {**TOKENIZER, "config": {**TOKENIZER["config"], "vocab_size": 320}}
    changed = load_recipe(str(write_recipe(tmp_path / "r.yaml", [CORPUS, tokenizer], table)))
    run_recipe(changed, "smoke", out)  # a changed config runs that stage again, and only it
    after = {p.name: p.stat().st_mtime for p in (out / "stages").glob("*.done.json")}
    assert after["corpus.done.json"] == done["corpus.done.json"]
    assert after["tokenizer.done.json"] > done["tokenizer.done.json"]
    smaller = {**CORPUS, "scale": {"smoke": {"max_documents": 30}}}  # a changed corpus: the tokenizer reads it,
    run_recipe(load_recipe(str(write_recipe(tmp_path / "r.yaml", [smaller, tokenizer], table))), "smoke", out)
    last = {p.name: p.stat().st_mtime for p in (out / "stages").glob("*.done.json")}  # so it runs again too
    assert last["corpus.done.json"] > after["corpus.done.json"]
    assert last["tokenizer.done.json"] > after["tokenizer.done.json"]


@pytest.mark.slow
def test_an_interrupted_stage_resumes(tmp_path, shared):
    """Ctrl-C during training, then the recipe again: the train stage continues from its checkpoint."""
    train = {"name": "model", "command": "train", "preset": "tiny", "resume": {"resume": True},
             "config": {"model": {"context_length": 32},
                        "train": {"data": "${out}/corpus", "tokenizer": "${out}/tokenizer", "out": "${out}/model",
                                  "max_steps": 100000, "checkpoint_interval": 20, "eval_interval": 1000,
                                  "progress": False}}}
    path = write_recipe(tmp_path / "r.yaml", [CORPUS, TOKENIZER, train])
    out = tmp_path / "out"
    args = [sys.executable, "-m", "talelab", "recipe", "run", str(path), "--scale", "smoke", "--out", str(out)]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "model" / "latest").is_file() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGINT)  # the terminal sends Ctrl-C to the whole process group
    child.communicate(timeout=60)
    assert child.returncode == 130
    assert (out / "stages" / "model.started").is_file() and not (out / "stages" / "model.done.json").exists()
    step = int((out / "model" / "latest").read_text().split("-")[-1].strip())
    finish = {**train, "config": {**train["config"], "train": {**train["config"]["train"], "max_steps": step + 20}}}
    write_recipe(path, [CORPUS, TOKENIZER, finish])
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "interrupted earlier: resuming" in result.stdout
    assert f"from step {step}" in result.stdout + result.stderr and "(finished earlier" in result.stdout
    resumed = yaml.safe_load((out / "stages" / "model.resume.yaml").read_text())
    assert resumed["resume"] is True


def test_every_bundled_recipe_dry_runs_at_every_scale(tmp_path, shared):
    names = available()
    assert "transformer-limits" in names
    for name in names:
        for scale in ("smoke", "cpu", "full"):
            result = talelab("recipe", "run", name, "--scale", scale, "--dry-run", "--out", str(tmp_path / name))
            assert result.returncode == 0, f"{name} at {scale}: {result.stderr}"
            assert "stage configs checked" in result.stdout


@pytest.mark.slow
def test_transformer_limits_smoke_fills_every_kind_of_table(tmp_path, shared):
    """The whole chain at smoke scale: a grid with its evaluations, memory, attention and neurons, then the report."""
    out = tmp_path / "tl"
    result = talelab("recipe", "run", "transformer-limits", "--scale", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    tables = {t["number"]: t for t in report["tables"]}
    assert len(tables) == len(load_recipe("transformer-limits").tables)
    losses = [row["measured"][0] for row in tables["Table 1"]["rows"]]
    assert all(isinstance(v, float) and 0 < v < 10 for v in losses)  # validation loss, nats per token
    assert all(row["measured"][1] is None for row in tables["Table 1"]["rows"])  # no judge offline
    for table in ("Table 2", "Table 3", "Table 4"):  # every probe prompt completed by every stand-in
        assert all(isinstance(v, str) for row in tables[table]["rows"] for v in row["measured"])
    assert all(isinstance(row["measured"][0], int) for row in tables["Table 5"]["rows"])  # batch 2, MB
    text = (out / "report.md").read_text()
    for picture in ("grid/axis_objective.png", "grid/axis_family.png", "grid/train_loss_curves.png",
                    "attention/heads_overview.png"):
        assert f"![{picture}]({picture})" in text and (out / picture).is_file()


@pytest.mark.slow
def test_small_models_from_scratch_smoke(tmp_path, shared):
    """A transformer and a GRU trained, evaluated (completion with SD and cosine, memorization against every
    training story, the study's probes) and their embeddings read, then every table of the study reported."""
    out = tmp_path / "sf"
    result = talelab("recipe", "run", "small-models-from-scratch", "--scale", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    tables = {t["number"]: t for t in json.loads((out / "report.json").read_text())["tables"]}
    assert len(tables) == len(load_recipe("small-models-from-scratch").tables)
    impurities = tables["Table (slide 'Impurities')"]["rows"]
    assert all(0 <= row["measured"][0] <= 100 for row in impurities[1:])  # shares of the stories read, in %
    stories = tables["Table (slide 'Statistics', TinyStories)"]["rows"][0]["measured"]
    assert sum(stories) == 300  # every story of the smoke corpus is in one split
    memorization = tables["Table: Transformer Models (AVG ± SD) (slide 'Memorization')"]["rows"][0]["measured"]
    assert all(set(cell) == {"mean", "sd"} and 0 <= cell["mean"] <= 1 for cell in memorization)
    gru = tables["Table: RNN Model Variants"]["rows"][2]["measured"]
    assert gru[:3] == [384, 2, 546] and isinstance(gru[5], float)  # the gru-5m preset's shape, its val loss
    overfitting = tables["Table (slide 'Overfitting')"]["rows"][0]["measured"]
    assert isinstance(overfitting[0], float) and 0 <= overfitting[1]["mean"] <= 1
    reasoning = tables["Table: Reasoning prompts"]["rows"][0]["measured"]
    assert all(isinstance(v, str) for v in reasoning)  # at smoke scale the 1M model stands in for every size


@pytest.mark.slow
def test_lora_tagged_stories_smoke(tmp_path, shared):
    """stories260K exported to Hugging Face, rule-tagged stories, three LoRA ranks beside the base model, and each
    model's stories at three temperatures: the four tables filled."""
    out = tmp_path / "lora"
    result = talelab("recipe", "run", "lora-tagged-stories", "--scale", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    tables = {t["number"]: t for t in json.loads((out / "report.json").read_text())["tables"]}
    dialogue, *others = tables["Table 1"]["rows"][0]["measured"]
    assert dialogue > 0 and others[:3] == [0, 0, 0]  # rules label Dialogue and MoralValue only
    counts = [row["measured"][0] for row in tables["Table 2"]["rows"]]
    assert counts[1] == 2 * counts[0] and counts[2] is None  # LoRA parameters double with the rank; smoke: 8, 16
    losses = tables["Table 3"]["rows"][0]["measured"]
    assert all(isinstance(v, float) for v in losses[:3])  # the base model and ranks 8 and 16
    rows = tables["Table 4"]["rows"]
    assert all(isinstance(v, float) for row in rows[:6] + rows[9:] for v in row["measured"])  # ranks 8, 16, base


@pytest.mark.slow
def test_tinyllama_sft_dpo_smoke(tmp_path, shared):
    """SFT trials from a list, scored on the study's questions beside the base model; the chosen trial merged;
    a DPO trial from it on HH-RLHF pairs, scored on the DPO questions."""
    out = tmp_path / "tlm"
    result = talelab("recipe", "run", "tinyllama-sft-dpo", "--scale", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    tables = {t["number"]: t for t in json.loads((out / "report.json").read_text())["tables"]}
    bleu, perplexity = (row["measured"] for row in tables["Table 1.5"]["rows"])
    for row in (bleu, perplexity):  # base, t1 and t3 ran at smoke scale; t2, t4, t5 did not
        assert all(isinstance(v, (int, float)) for v in (row[0], row[1], row[3])) and row[2] is None
    assert perplexity[0] > 1
    assert tables["Table 1.1"]["rows"][2]["measured"][:2] == [32, 128.0]  # trial 3 ran with the study's rank, alpha
    assert all(isinstance(row["measured"][0], str) for row in tables["Table 1.4"]["rows"][1:])  # the answers
    dpo = [row["measured"] for row in tables["Table 2.4"]["rows"]]
    assert all(isinstance(row[0], (int, float)) and isinstance(row[1], (int, float)) for row in dpo)


@pytest.mark.slow
def test_poetry_dapt_instruct_smoke(tmp_path, shared):
    """Domain-adaptive pretraining on the sonnets, the adapter merged, then an instruction run with a test split."""
    out = tmp_path / "poetry"
    result = talelab("recipe", "run", "poetry-dapt-instruct", "--scale", "smoke", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    tables = {t["number"]: t for t in json.loads((out / "report.json").read_text())["tables"]}
    run_2 = tables["Table (section 5.1, GPT-2)"]["rows"][1]["measured"]
    assert run_2[:4] == [2, 8, 3, 5e-05] and all(isinstance(v, float) for v in run_2[4:])  # settings, losses
    final = [row["measured"][0] for row in tables["Final evaluation metrics (section 5.1, GPT-2)"]["rows"]]
    assert all(isinstance(v, float) and v > 0 for v in final)  # training, validation and test loss
