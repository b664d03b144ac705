"""`talelab prefs build`: story preference pairs (prompt = a story's beginning, chosen = its real continuation,
rejected = the continuation shuffled or the model's own sample), deterministic for a seed."""

from __future__ import annotations

import json

import pytest

from talelab.cli import main
from talelab.config import PrefsConfig
from talelab.data.sentences import split_sentences
from talelab.errors import ConfigError
from talelab.finetune.prefs import build_pairs, read_stories


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_shuffle_pairs_are_a_story_cut_at_a_sentence_and_its_continuation_reordered(prepared, tmp_path):
    out = tmp_path / "pairs.jsonl"
    summary = build_pairs(PrefsConfig(data=str(prepared), out=str(out), max_pairs=40, progress=False))
    pairs = rows(out)
    assert summary["pairs"] == len(pairs) == 40 and summary["out"] == str(out)
    stories = iter(read_stories(str(prepared), "train", "text"))
    for pair in pairs:
        assert list(pair) == ["prompt", "chosen", "rejected"]
        story = next(s for s in stories if " ".join(split_sentences(s)) == pair["prompt"] + pair["chosen"])
        sentences = split_sentences(story)
        assert len(split_sentences(pair["prompt"])) == max(1, round(0.4 * len(sentences)))  # prompt_fraction 0.4
        assert pair["chosen"].startswith(" ") and pair["rejected"].startswith(" ")
        assert pair["rejected"] != pair["chosen"]
        assert sorted(pair["rejected"].split()) == sorted(pair["chosen"].split())  # same words, other order


def test_same_seed_same_pairs_other_seed_other_shuffles(prepared, tmp_path):
    def build(name, seed):
        build_pairs(PrefsConfig(data=str(prepared), out=str(tmp_path / name), max_pairs=25, seed=seed))
        return (tmp_path / name).read_bytes()

    assert build("a.jsonl", 7) == build("b.jsonl", 7)
    build("c.jsonl", 8)
    seven, eight = rows(tmp_path / "a.jsonl"), rows(tmp_path / "c.jsonl")
    assert [r["chosen"] for r in eight] == [r["chosen"] for r in seven]
    assert [r["rejected"] for r in eight] != [r["rejected"] for r in seven]


def test_sample_rejection_is_the_models_own_continuation_seeded_per_story(stories260k, prepared, tmp_path):
    def build(name, batch_size):
        config = PrefsConfig(data=str(prepared), out=str(tmp_path / name), rejected="sample", model=str(stories260k),
                             max_pairs=6, batch_size=batch_size, max_new_tokens=40, progress=False)
        build_pairs(config)
        return rows(tmp_path / name)

    pairs = build("a.jsonl", batch_size=6)
    assert build("b.jsonl", batch_size=2) == pairs  # story i is sampled with seed + i, whatever the batching
    shuffled = {r["prompt"]: r for r in rows_of_shuffle(prepared, tmp_path)}
    for pair in pairs:
        assert pair["chosen"] == shuffled[pair["prompt"]]["chosen"]  # the same real continuation in both modes
        assert pair["rejected"].strip() and pair["rejected"] != pair["chosen"]
        assert "\n" not in pair["rejected"]  # flattened like the real continuation


def rows_of_shuffle(prepared, tmp_path) -> list[dict]:
    build_pairs(PrefsConfig(data=str(prepared), out=str(tmp_path / "shuffle.jsonl"), max_pairs=6))
    return rows(tmp_path / "shuffle.jsonl")


def test_prefs_build_command_reads_a_text_file_under_the_data_root(tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    assert main(["prefs", "build", "--data", "data/tinystories/v2-gpt4-sample.txt", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stories"] == 5 and summary["pairs"] == len(rows(out)) > 0


def test_unknown_rejected_choice_and_sample_without_model_are_one_line_errors(prepared, tmp_path, capsys):
    assert main(["prefs", "build", "--data", str(prepared), "--rejected", "worst", "--out", str(tmp_path / "p")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--rejected" in error and "worst" in error
    with pytest.raises(ConfigError, match="rejected='worst' is not one of shuffle, sample"):
        build_pairs(PrefsConfig(data=str(prepared), out=str(tmp_path / "p"), rejected="worst"))
    assert main(["prefs", "build", "--data", str(prepared), "--rejected", "sample", "--out", str(tmp_path / "p")]) == 2
    assert "--model" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_sample_rejection_from_a_hugging_face_model_is_deterministic(stories260k_hf, prepared, tmp_path):
    def build(name):
        build_pairs(PrefsConfig(data=str(prepared), out=str(tmp_path / name), rejected="sample",
                                model=str(stories260k_hf), max_pairs=4, max_new_tokens=30, progress=False))
        return rows(tmp_path / name)

    pairs = build("a.jsonl")
    assert build("b.jsonl") == pairs and len(pairs) == 4
    assert all(p["rejected"].strip() and p["rejected"] != p["chosen"] for p in pairs)


def test_max_pairs_reads_the_split_only_until_enough_stories_were_cut(prepared, tmp_path):
    from talelab.finetune.prefs import cut_story

    summary = build_pairs(PrefsConfig(data=str(prepared), out=str(tmp_path / "pairs.jsonl"), max_pairs=10))
    needed, usable = 0, 0  # stories read, in order, until the tenth with enough sentences after its prompt
    for story in read_stories(str(prepared), "train", "text"):
        needed += 1
        usable += cut_story(story, 0.4, 2) is not None
        if usable == 10:
            break
    assert summary["stories"] == needed < sum(1 for _ in read_stories(str(prepared), "train", "text"))
    assert summary["skipped_too_short"] == needed - 10
