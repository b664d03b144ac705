"""The prepare stage end to end: counts that add up, deterministic splits, atomic output, errors that leave nothing."""

from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from talelab import paths
from talelab.config import PrepareConfig
from talelab.data.prepare import prepare, split_documents
from talelab.data.sources import read_documents
from talelab.data.tags import FEATURES, rule_features
from talelab.errors import ConfigError, InputError

SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")
OUTPUT_FILES = SPLIT_FILES + ("report.json", "report.md", "lengths.png", "coverage.png")


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def run(source, out, **overrides) -> dict:
    return prepare(PrepareConfig(source=str(source), out=str(out), **overrides), progress=False)


@pytest.fixture(scope="module")
def train_head(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepare") / "train-head"
    run(paths.TINYSTORIES_TRAIN, out)
    return out


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_same_input_gives_byte_identical_files(train_head, tmp_path):
    run(paths.TINYSTORIES_TRAIN, tmp_path / "again")
    for name in SPLIT_FILES + ("report.md",):
        first = (train_head / name).read_text(encoding="utf-8")
        again = (tmp_path / "again" / name).read_text(encoding="utf-8")
        if name == "report.md":  # the one line that holds the run time
            first, again = (text.split("\n", 3)[3] for text in (first, again))
        assert first == again, name


@pytest.mark.slow
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


@pytest.mark.slow
def test_rerun_replaces_an_earlier_output_and_leaves_no_siblings(tmp_path):
    out = tmp_path / "out"
    run(paths.TINYSTORIES_TRAIN, out, max_documents=40)
    (out / "stale-shards").mkdir()  # what a later stage may have added: stale once the text changes
    run(paths.TINYSTORIES_TRAIN, out, max_documents=20)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
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


# --- at scale: the streaming pipeline gives what the whole-corpus one gave ----------------------------------------

# SHA-256 of the splits that the pre-streaming implementation (commit 93ab19c, datasketch over a list of every
# document) wrote for the demo's sources and for valid-head.txt. Streaming, workers and the compact duplicate index
# must not move a single document.
BEFORE_STREAMING = {
    "demo": {"train.jsonl": "590aee366e89a479984cb9740428e8de8e4d8a2f3690b236ebdadb2941914254",
             "val.jsonl": "07f89f05ac1fb22bc8f97847be64017ec6379ed2a002beea98acd720270a840c",
             "test.jsonl": "7222e909da69819b7203eb8ee31565f05b2d41e4108bef213bf085ed1fab013b"},
    "valid": {"train.jsonl": "b22523d1e58151bde9e77ace9efa4f1646bb7fbae81983170d9220376432c9e1",
              "val.jsonl": "f4abe326f2fefec3ff39f3148323569f35ba37c681676d0178b4eb34334a6197",
              "test.jsonl": "48172008798cdd9ce7d23bf4bb377d40fabd04222d5c4b2405c195422530654f"},
}


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_demo_sources_give_the_splits_the_whole_corpus_implementation_gave(tmp_path):
    run("data/tinystories/train-head.txt,data/tinystories/train-head-lowercase.txt", tmp_path / "demo",
        format="eot,lines", recase=True)
    run(paths.TINYSTORIES_VALID, tmp_path / "valid")
    for corpus, hashes in BEFORE_STREAMING.items():
        assert {name: sha256(tmp_path / corpus / name) for name in SPLIT_FILES} == hashes, corpus
    report = json.loads((tmp_path / "demo" / "report.json").read_text(encoding="utf-8"))
    removed = {r["rule"]: r.get("removed", r.get("changed")) for r in report["rules"]}
    assert removed["exact_duplicate"] == 2239 and removed["near_duplicate"] == 7 and removed["recase"] == 5478


@pytest.mark.slow
def test_one_worker_and_two_workers_write_identical_splits(tmp_path):
    # 2,317 stories: five batches, so two workers really run (fewer batches are cleaned in-process)
    run(paths.TINYSTORIES_TRAIN, tmp_path / "one", workers=1)
    run(paths.TINYSTORIES_TRAIN, tmp_path / "two", workers=2)
    for name in SPLIT_FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    reports = [json.loads((tmp_path / d / "report.json").read_text(encoding="utf-8")) for d in ("one", "two")]
    assert reports[0]["rules"] == reports[1]["rules"] and reports[0]["statistics"] == reports[1]["statistics"]


ALL_DATA = [  # the shape of TinyStories' all_data records (one genuine example in ../shared/README.md)
    {"story": "Tom had a red ball. He said, \"Let's play!\" They played all day in the sun and were happy.",
     "instruction": {"prompt:": "Write a story.", "words": ["ball", "play"], "features": ["Dialogue"]},
     "summary": "Tom plays with a ball.", "source": "GPT-4"},
    {"story": "Sue found a small bird in the garden. She gave it water, and the bird sang a happy song for her.",
     "instruction": {"prompt:": "Write a story.", "words": ["bird"], "features": []},
     "summary": "Sue helps a bird.", "source": "GPT-3.5"},
    {"story": "Ben wanted the last cookie. He took it, but then he felt bad and shared it with his little sister.",
     "instruction": {"prompt:": "Write a story.", "words": ["cookie"], "features": ["MoralValue", "Conflict"]},
     "summary": "Ben learns to share.", "source": "GPT-4"},
]


def test_metadata_of_all_data_records_survives_into_the_splits(tmp_path):
    source = tmp_path / "data00.json"
    source.write_text(json.dumps(ALL_DATA), encoding="utf-8")  # one JSON array, as the all_data files are
    run(source, tmp_path / "out", text_field="story", val_fraction=0, test_fraction=0)
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == [r["story"] for r in ALL_DATA]
    assert rows[2]["instruction"]["features"] == ["MoralValue", "Conflict"] and rows[0]["summary"].startswith("Tom")
    assert list(rows[0]) == ["text", "instruction", "summary", "source"]  # the text first, no "story" left


def test_require_field_keeps_records_whose_field_is_present_and_not_empty(tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ALL_DATA), encoding="utf-8")
    summary = run(source, tmp_path / "out", text_field="story", require_field="instruction.features",
                  val_fraction=0, test_fraction=0)
    assert summary["documents_in"] == 3 and summary["removed"]["missing_field"] == 1
    assert summary["documents_out"] == 2  # Sue's story has an empty feature list


@pytest.mark.slow
def test_sample_draws_the_same_n_documents_for_the_same_seed(tmp_path):
    a = run(paths.TINYSTORIES_TRAIN, tmp_path / "a", sample=100, seed=3, max_documents=1000)
    run(paths.TINYSTORIES_TRAIN, tmp_path / "b", sample=100, seed=3, max_documents=1000)
    run(paths.TINYSTORIES_TRAIN, tmp_path / "c", sample=100, seed=4, max_documents=1000)
    assert a["removed"]["sample"] == 900 and a["documents_in"] == 1000
    assert a["documents_out"] + sum(a["removed"].values()) - 900 == 100  # the other rules saw just the sample
    texts = {d: read_documents(str(tmp_path / d / "train.jsonl")) for d in "abc"}
    assert texts["a"] == texts["b"] and texts["a"] != texts["c"]


def test_statistics_count_words_lengths_and_coverage_by_hand(tmp_path):
    # Three documents of 13, 14 and 17 words: 44 words, 8 + 8 + 12 = 28 of them new where they first occur.
    docs = ["The cat sat on the mat and the dog sat on the rug.",
            "A cat and a dog ran to the big red barn in the sun.",
            "The small cat slept all day long while the rain fell softly on the old tin roof."]
    source = tmp_path / "docs.jsonl"
    write_jsonl(source, docs)
    run(source, tmp_path / "out", min_chars=10, val_fraction=0, test_fraction=0)
    stats = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["statistics"]
    assert (stats["documents"], stats["words"], stats["unique_words"]) == (3, 44, 28)
    assert stats["words_per_document_mean"] == 14.7  # 44 / 3
    assert stats["words_per_document_sd"] == 1.7  # sqrt(((13 - 44/3)^2 + (14 - 44/3)^2 + (17 - 44/3)^2) / 3)
    assert stats["coverage"]["500"] == 1.0
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| 3 | 44 | 28 | 14.7 ± 1.7 |" in markdown and "![coverage](coverage.png)" in markdown


@pytest.mark.slow
def test_statistics_count_tokens_of_a_given_tokenizer_without_the_duplicates(tmp_path, bpe_dir):
    from talelab.tokenizer import load_tokenizer

    docs = read_documents(paths.TINYSTORIES_TRAIN, max_documents=30)
    source = tmp_path / "docs.jsonl"
    write_jsonl(source, docs + docs[:5])  # five exact copies, dropped: their tokens must not count
    run(source, tmp_path / "out", stats_tokenizer=str(bpe_dir), val_fraction=0, test_fraction=0)
    stats = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["statistics"]
    kept = read_documents(str(tmp_path / "out" / "train.jsonl"))
    ids = [i for row in load_tokenizer(bpe_dir).encode_batch(kept) for i in row]
    assert stats["tokens"] == len(ids) and stats["unique_tokens"] == len(set(ids))


# --- interruptions: Ctrl-C and a full disk leave the previous output -----------------------------------------------


def talelab_prepare(*args, setup=lambda: None) -> subprocess.Popen:
    """`talelab prepare` in a child process; `setup` runs in the child before it starts (e.g. a resource limit)."""
    def start():
        # Ctrl-C as a terminal delivers it: a suite started in the background (`cmd &` in a script) inherits SIGINT
        # ignored, and so would this child, which would then finish its job instead of stopping (exit 0, not 130)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        setup()

    return subprocess.Popen([sys.executable, "-m", "talelab", "prepare", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, preexec_fn=start)


def big_corpus(tmp_path: Path) -> Path:
    """About 12 MB: train-head.txt six times over (repeats are exact duplicates, read and cleaned all the same)."""
    corpus = tmp_path / "big.txt"
    corpus.write_bytes(paths.shared_file(paths.TINYSTORIES_TRAIN).read_bytes() * 6)
    return corpus


@pytest.mark.slow
def test_ctrl_c_mid_prepare_exits_130_with_one_line_and_leaves_the_previous_output(tmp_path):
    out = tmp_path / "out"
    run(paths.TINYSTORIES_TRAIN, out, max_documents=40)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    process = talelab_prepare("--source", str(big_corpus(tmp_path)), "--out", str(out), "--workers", "2")
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.tmp-*/.documents.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.05)  # interrupt once the scratch file is being written: mid-way, not before or after
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and len(stderr.strip().splitlines()) == 1 and "interrupted" in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "out"]


@pytest.mark.slow
def test_disk_filling_mid_write_exits_with_one_line_and_leaves_the_previous_output(tmp_path):
    out = tmp_path / "out"
    run(paths.TINYSTORIES_TRAIN, out, max_documents=40)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def limit_file_size():  # a 4 MB file-size limit: writing the 12 MB corpus' scratch file fails like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    process = talelab_prepare("--source", str(big_corpus(tmp_path)), "--out", str(out), setup=limit_file_size)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and len(stderr.strip().splitlines()) == 1
    assert f"while writing {out}; the previous output is intact" in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "out"]


@pytest.mark.parametrize("layout", ["eot", "blank-line", "jsonl"])
@pytest.mark.slow
def test_a_file_cut_into_ranges_gives_the_splits_of_one_stream(tmp_path, monkeypatch, layout):
    from talelab.data import sources

    stories = read_documents(paths.TINYSTORIES_TRAIN)[:-1] + read_documents(paths.TINYSTORIES_VALID)[1:2000]
    corpus = tmp_path / f"corpus.{'jsonl' if layout == 'jsonl' else 'txt'}"
    if layout == "jsonl":
        write_jsonl(corpus, stories)
    else:
        separator = "\n<|endoftext|>\n" if layout == "eot" else "\n\n\n"
        corpus.write_text(separator.join(s.replace("\n\n", "\n") for s in stories) + "\n", encoding="utf-8")
    monkeypatch.setattr(sources, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(sources, "RANGE_BYTES", 50_000)  # ~60 ranges, so separators fall at every kind of place
    ranges, _ = sources.split_file(str(corpus), "auto", parts=4)
    assert len(ranges) > 40 and ranges[-1].end == corpus.stat().st_size
    run(corpus, tmp_path / "ranges", format=layout, workers=2)
    run(corpus, tmp_path / "stream", format=layout, max_documents=10**9)  # a filter: one stream, in order
    for name in SPLIT_FILES:
        assert (tmp_path / "ranges" / name).read_bytes() == (tmp_path / "stream" / name).read_bytes(), name
    reports = [json.loads((tmp_path / d / "report.json").read_text(encoding="utf-8")) for d in ("ranges", "stream")]
    assert reports[0]["documents_in"] == reports[1]["documents_in"] > 4000
    assert reports[0]["rules"] == reports[1]["rules"] and reports[0]["statistics"] == reports[1]["statistics"]


@pytest.mark.slow
def test_a_bad_line_deep_in_a_cut_file_is_named_by_its_line(tmp_path, monkeypatch):
    from talelab.data import sources

    corpus = tmp_path / "rows.jsonl"
    lines = [json.dumps({"text": f"Story number {i} is about a cat who likes milk."}) for i in range(5000)]
    lines[4321] = '{"text": oops}'
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(sources, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(sources, "RANGE_BYTES", 20_000)
    with pytest.raises(InputError, match=f"{corpus}:4322: not valid JSON"):
        run(corpus, tmp_path / "out", workers=2)
    assert not (tmp_path / "out").exists()


def test_tag_counts_give_every_feature_per_split_from_the_records_labels(tmp_path):
    source = tmp_path / "data00.json"
    source.write_text(json.dumps(ALL_DATA), encoding="utf-8")
    run(source, tmp_path / "out", text_field="story", val_fraction=0, test_fraction=0)
    tags = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["tags"]
    # Tom: Dialogue; Sue: none; Ben: MoralValue and Conflict. All three in train.
    expected = {"Dialogue": 1, "BadEnding": 0, "MoralValue": 1, "Twist": 0, "Foreshadowing": 0, "Conflict": 1}
    assert tags["field"] == "instruction.features" and tags["labelled_by_rules"] is None
    assert tags["stories"]["train"] == tags["stories"]["all"] == expected
    assert tags["stories"]["val"] == tags["stories"]["test"] == dict.fromkeys(expected, 0)
    assert tags["without_feature"] == {"train": 1, "val": 0, "test": 0, "all": 1}
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "| feature | train | val | test | all |" in markdown and "| Conflict | 1 | 0 | 0 | 1 |" in markdown
    assert "| (none of them) | 1 | 0 | 0 | 1 |" in markdown


def test_text_without_tags_gets_no_tag_section(tmp_path):
    run(paths.TINYSTORIES_TRAIN, tmp_path / "out", max_documents=20)
    assert "tags" not in json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert "## Feature tags" not in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


TAGLESS = ["Tom saw a dog in the park. He ran to it and they played with a stick until the sun went down.",
           'Mia held up her kite. "Look how high it goes!" she said, and her dad clapped for her.',
           "Sam broke the vase and hid it. Later he told his mom, and he learned that it is good to tell the truth.",
           # the quotation marks as mojibake (UTF-8 read as Windows-1252), as in TinyStories' validation file
           "Lily found a shell on the beach. \u00e2\u20ac\u0153It is so pretty,\u00e2\u20ac\u009d she whispered to it.",
           "The cat slept in the sun all day. At night it woke up, ate its dinner and went back to sleep again."]


def test_tag_rules_label_records_without_tags_and_require_field_keeps_the_tagged_ones(tmp_path):
    source = tmp_path / "stories.jsonl"
    write_jsonl(source, TAGLESS)
    summary = run(source, tmp_path / "out", tag_rules=True, require_field="instruction.features",
                  val_fraction=0, test_fraction=0)
    assert summary["removed"]["missing_field"] == 2  # Tom's and the cat's stories show no rule feature
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["instruction"]["features"] for r in rows] == [["Dialogue"], ["MoralValue"], ["Dialogue"]]
    assert "\u201cIt is so pretty,\u201d" in rows[2]["text"]  # the quotes the rule saw, repaired in the split too
    tags = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["tags"]
    assert tags["labelled_by_rules"] == 5
    assert tags["stories"]["all"] == {"Dialogue": 2, "BadEnding": 0, "MoralValue": 1, "Twist": 0, "Foreshadowing": 0,
                                      "Conflict": 0}
    assert "Dialogue and MoralValue only" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")


def test_tag_rules_leave_the_labels_of_records_that_have_them(tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ALL_DATA + [{"story": TAGLESS[1]}]), encoding="utf-8")
    run(source, tmp_path / "out", text_field="story", tag_rules=True, val_fraction=0, test_fraction=0)
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["instruction"]["features"] for r in rows] == [["Dialogue"], [], ["MoralValue", "Conflict"], ["Dialogue"]]
    assert rows[0]["instruction"]["words"] == ["ball", "play"]  # the published record is left whole
    assert json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))["tags"]["labelled_by_rules"] == 1


def test_tag_rules_on_shared_stories_label_each_kept_story_as_the_rules_read_it(tmp_path):
    run(paths.TINYSTORIES_TRAIN, tmp_path / "out", tag_rules=True, max_documents=150)
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    counted = dict.fromkeys(FEATURES, 0)
    for name in SPLIT_FILES:
        for line in (tmp_path / "out" / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert row["instruction"]["features"] == rule_features(row["text"])
            for feature in row["instruction"]["features"]:
                counted[feature] += 1
    assert report["tags"]["stories"]["all"] == counted and counted["Dialogue"] > 50


def test_tag_rules_refuse_a_field_whose_parent_is_not_an_object(tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"text": TAGLESS[1], "instruction": "Write a story."}) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"rows.jsonl: record 1: 'instruction' is not an object.*--tag-field"):
        run(source, tmp_path / "out", tag_rules=True)
