"""The prepare stage end to end: counts that add up, deterministic splits, atomic output, errors that leave nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from talelab import paths
from talelab.config import PrepareConfig
from talelab.data.prepare import prepare, split_documents, write_jsonl, write_output
from talelab.data.sources import read_documents
from talelab.errors import ConfigError, InputError

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")


def run(source, out, **overrides) -> dict:
    return prepare(PrepareConfig(source=str(source), out=str(out), **overrides), progress=False)


@pytest.fixture(scope="module")
def train_head(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepare") / "train-head"
    run(paths.TINYSTORIES_TRAIN, out)
    return out


def test_train_head_prepares_about_2300_stories_and_the_report_counts_add_up(train_head):
    report = json.loads((train_head / "report.json").read_text(encoding="utf-8"))
    assert report["documents_in"] == 2317
    assert 2300 <= report["documents_out"] <= 2317
    removed = sum(r["removed"] for r in report["rules"] if r["action"] == "drop")
    assert report["documents_in"] - removed == report["documents_out"]
    assert sum(s["documents"] for s in report["splits"].values()) == report["documents_out"]
    for name in ("train", "val", "test"):
        texts = read_documents(str(train_head / f"{name}.jsonl"), format="jsonl")
        assert len(texts) == report["splits"][name]["documents"]
        assert sum(map(len, texts)) == report["splits"][name]["characters"]
    assert 20 <= report["splits"]["val"]["documents"] <= 80  # 2 % of ~2,300, give or take hashing luck
    assert all(len(r["examples"]) <= 2 for r in report["rules"])


def test_report_md_lists_every_rule_and_every_split(train_head):
    markdown = (train_head / "report.md").read_text(encoding="utf-8")
    report = json.loads((train_head / "report.json").read_text(encoding="utf-8"))
    assert markdown.startswith(f"# Prepared corpus: {paths.TINYSTORIES_TRAIN}")
    for rule in report["rules"]:
        assert f"| {rule['rule']} |" in markdown
    for name, split in report["splits"].items():
        assert f"| {name} | {split['documents']:,} | {split['characters']:,} |" in markdown


def test_prepare_returns_a_summary_without_examples(tmp_path):
    summary = run(paths.TINYSTORIES_TRAIN, tmp_path / "out", max_documents=30)
    assert summary["documents_in"] == 30 and summary["out"] == str(tmp_path / "out")
    assert set(summary["removed"]) == {"too_short", "too_long", "non_ascii", "exact_duplicate", "near_duplicate"}
    assert summary["documents_out"] == sum(s["documents"] for s in summary["splits"].values())


def test_same_input_gives_byte_identical_files(train_head, tmp_path):
    run(paths.TINYSTORIES_TRAIN, tmp_path / "again")
    for name in SPLIT_FILES + ("report.md",):
        first = (train_head / name).read_text(encoding="utf-8")
        again = (tmp_path / "again" / name).read_text(encoding="utf-8")
        if name == "report.md":  # the one line that holds the run time
            first, again = (text.split("\n", 3)[3] for text in (first, again))
        assert first == again, name


def test_split_of_a_document_does_not_depend_on_document_order(tmp_path):
    docs = read_documents(paths.TINYSTORIES_TRAIN, max_documents=300)
    shuffled = docs[:]
    random.Random(0).shuffle(shuffled)
    write_jsonl(tmp_path / "ordered.jsonl", docs)
    write_jsonl(tmp_path / "shuffled.jsonl", shuffled)
    run(tmp_path / "ordered.jsonl", tmp_path / "a", val_fraction=0.1, test_fraction=0.1)
    run(tmp_path / "shuffled.jsonl", tmp_path / "b", val_fraction=0.1, test_fraction=0.1)
    for name in SPLIT_FILES:
        a = read_documents(str(tmp_path / "a" / name), format="jsonl")
        b = read_documents(str(tmp_path / "b" / name), format="jsonl")
        assert sorted(a) == sorted(b) and len(a) > 10, name


def test_ten_documents_still_give_one_validation_and_one_test_document():
    docs = [f"Story number {i} is about a cat." for i in range(10)]
    splits = split_documents(docs, val_fraction=0.02, test_fraction=0.02)
    assert len(splits["val"]) == 1 and len(splits["test"]) == 1 and len(splits["train"]) == 8
    assert split_documents(docs[:9], 0.02, 0.02)["val"] == []  # below ten, the hash alone decides


def bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Each bad input case: (file, what the one-line message must contain)."""
    cases = {
        "missing": ("missing.txt", None, "missing.txt: no such file"),
        "binary": ("binary.txt", b"story\x00", "binary.txt: looks binary"),
        "latin1": ("latin1.txt", "caf\u00e9".encode("latin-1"), "latin1.txt: not valid UTF-8"),
        "bad json": ("rows.jsonl", b'{"text": "ok"}\n{oops\n', "rows.jsonl:2: not valid JSON"),
        "no field": ("rows.jsonl", b'{"story": "x"}\n', "rows.jsonl:1: no string field 'text'"),
        "empty": ("empty.txt", b"  \n", "empty.txt: no documents"),
        "all too short": ("short.txt", b"Hi.\n\nBye.\n", "short.txt: no documents left after cleaning (too_short "
                                                          "removed 2)"),
    }
    made = {}
    for case, (name, content, expected) in cases.items():
        path = tmp / case.replace(" ", "-") / name
        path.parent.mkdir()
        if content is not None:
            path.write_bytes(content)
        made[case] = (path, expected)
    return made


@pytest.mark.parametrize("case", ["missing", "binary", "latin1", "bad json", "no field", "empty", "all too short"])
def test_bad_input_raises_one_line_naming_the_file_and_leaves_no_output(tmp_path, case):
    path, expected = bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        run(path, out)
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_failed_run_leaves_the_previous_output_untouched(train_head, tmp_path):
    out = tmp_path / "out"
    run(paths.TINYSTORIES_TRAIN, out, max_documents=40)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(InputError):
        run(tmp_path / "empty.txt", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_crash_while_writing_keeps_the_previous_output_and_no_partial_directory(tmp_path):
    out = tmp_path / "out"
    run(paths.TINYSTORIES_TRAIN, out, max_documents=40)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    report["unserialisable"] = object()  # json.dumps fails after the split files and report.md are written
    with pytest.raises(TypeError):
        write_output(out, {"train": ["new"], "val": [], "test": []}, report)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_rerun_replaces_an_earlier_output_and_leaves_no_siblings(tmp_path):
    out = tmp_path / "out"
    run(paths.TINYSTORIES_TRAIN, out, max_documents=40)
    (out / "stale-shards").mkdir()  # what a later stage may have added: stale once the text changes
    run(paths.TINYSTORIES_TRAIN, out, max_documents=20)
    assert sorted(p.name for p in out.iterdir()) == sorted(SPLIT_FILES + ("report.json", "report.md"))
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["documents_in"] == 20
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(InputError, match="is not a prepared corpus"):
        run(paths.TINYSTORIES_TRAIN, tmp_path, max_documents=5)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("overrides", [{"val_fraction": 0.6, "test_fraction": 0.4}, {"val_fraction": -0.1},
                                       {"near_duplicate_threshold": 1.5}, {"min_chars": 10, "max_chars": 5},
                                       {"max_non_ascii": 2.0}, {"max_documents": -1}])
def test_out_of_range_settings_raise_config_error_before_reading(tmp_path, overrides):
    with pytest.raises(ConfigError):
        run(tmp_path / "never-read.txt", tmp_path / "out", **overrides)


def test_corpus_whose_only_document_hashes_into_val_is_refused_rather_than_left_without_training_data(tmp_path):
    source = tmp_path / "one.txt"
    source.write_text("Once upon a time there was one story, and only one, about a very patient snail.\n")
    with pytest.raises(InputError, match="one.txt: all 1 documents fell into val/test"):
        run(source, tmp_path / "out", val_fraction=0.99, test_fraction=0.0)
    assert not (tmp_path / "out").exists()
