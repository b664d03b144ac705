"""Recasing lowercased stories from the casing of cased ones, and reading TinyStories' lowercased train file."""

from __future__ import annotations

import json

import pytest

from talelab import paths
from talelab.config import PrepareConfig
from talelab.data.clean import repair_mojibake
from talelab.data.prepare import prepare
from talelab.data.recase import Recaser, is_lowercased, recase_accuracy
from talelab.data.sources import read_documents
from talelab.errors import InputError

LOWERCASE = paths.TINYSTORIES_TRAIN_LOWERCASE


def test_hand_made_sentences_get_their_capitals_back():
    recaser = Recaser().learn(['Lily said, "Mom, I found a ball." She was happy.\nThe dog ran to Lily.'])
    assert recaser.recase('lily said, "mom, i found a dog." she ran.\nthe ball was red.') == \
        'Lily said, "Mom, I found a dog." She ran.\nThe ball was red.'


def test_a_name_introduced_in_the_story_is_capitalised_even_when_never_seen():
    recaser = Recaser().learn(["Once upon a time, there was a cat named Tom. Tom liked to run."])
    assert recaser.recase("once upon a time, there was a frog named zork. one day zork swam.") == \
        "Once upon a time, there was a frog named Zork. One day Zork swam."


@pytest.mark.slow
def test_over_99_percent_of_held_out_words_are_recased_as_written():
    stories = read_documents(paths.TINYSTORIES_TRAIN)
    accuracy = recase_accuracy(stories)
    assert 0.99 < accuracy < 1.0  # 99.4 % measured: Mom/mom, Dad/dad as names or nouns are the usual misses


def test_lines_format_ends_a_document_at_a_line_break_and_keeps_blank_lines_as_paragraphs(tmp_path):
    path = tmp_path / "lower.txt"
    path.write_text("first story.\n\nits second paragraph. \nsecond story.\n\n\nstill second.\nthird.\n",
                    encoding="utf-8")
    assert read_documents(str(path), format="lines") == [
        "first story.\nits second paragraph.", "second story.\nstill second.", "third."]


def test_the_shared_lowercase_file_holds_the_stories_of_the_cased_head():
    lower = read_documents(LOWERCASE, format="lines")
    cased = read_documents(paths.TINYSTORIES_TRAIN)
    assert 5400 < len(lower) < 5600
    assert all(is_lowercased(d) for d in lower[:100])
    # Equal up to case, spacing (the cased file keeps trailing spaces) and mojibake (the lowercased one has it).
    heads = {" ".join(d.lower().split()) for d in cased}
    found = sum(" ".join(repair_mojibake(d).split()) in heads for d in lower)
    # ~3 % of stories break at a paragraph that ends in a single line break, the ambiguity shared/README.md warns of
    assert 2200 < found <= len(cased)


def test_several_sources_are_read_in_turn_with_one_format_each(tmp_path):
    eot = tmp_path / "a.txt"
    eot.write_text("A one.\n<|endoftext|>\nA two.\n", encoding="utf-8")
    lines = tmp_path / "b.txt"
    lines.write_text("b one.\n\nmore b one.\nb two.\n", encoding="utf-8")
    assert read_documents(f"{eot},{lines}", format="eot,lines") == ["A one.", "A two.", "b one.\nmore b one.",
                                                                   "b two."]
    with pytest.raises(InputError, match="lists 3 formats for 2 sources"):
        read_documents(f"{eot},{lines}", format="eot,lines,eot")


@pytest.mark.slow
def test_prepare_with_recase_adds_the_lowercased_stories_beyond_the_cased_head(tmp_path):
    out = tmp_path / "prepared"
    summary = prepare(PrepareConfig(source=f"{paths.TINYSTORIES_TRAIN},{LOWERCASE}", format="eot,lines",
                                    recase=True, out=str(out)), progress=False)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    recase = report["rules"][0]
    assert recase["rule"] == "recase" and recase["changed"] > 5000
    assert 0.99 < recase["held_out_word_accuracy"] < 1
    # The lowercase copies of the cased head's stories are dropped as duplicates of the originals, which stay.
    assert summary["removed"]["exact_duplicate"] > 2200
    assert 4900 < summary["documents_out"] < 5600
    train = read_documents(str(out / "train.jsonl"), format="jsonl")
    assert not any(is_lowercased(d) for d in train)
    assert train[0].startswith("One day, a little girl named Lily found a needle")
    assert "Recasing restores 99." in (out / "report.md").read_text(encoding="utf-8")
