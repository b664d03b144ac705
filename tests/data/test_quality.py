"""The quality score: components computed by hand on tiny texts, real stories against junk, and the prepare filter."""

from __future__ import annotations

import json

import pytest

from talelab import paths
from talelab.config import PrepareConfig
from talelab.data.prepare import prepare
from talelab.data.quality import WEIGHTS, length_component, quality_components, quality_score
from talelab.data.sources import read_documents
from talelab.errors import ConfigError, InputError
from talelab.evaluate.quality import quality_section

JUNK = "$$$ ### @@@ click here http://x.y/z?q=1 &&& {{}} <<>> ~~~ buy now buy now buy now ^^^ %%% ||| ==="


@pytest.fixture(scope="module")
def stories(shared) -> list[str]:
    return read_documents(shared / paths.TINYSTORIES_TRAIN, format="eot")[:200]


def test_a_story_of_one_sentence_repeated_scores_low_on_repetition_and_variety():
    components = quality_components("The cat sat. The cat sat. The cat sat. The cat sat. The cat sat.")
    assert components == pytest.approx({
        "vocabulary": 3 / 15 / 0.5,  # 3 distinct of 15 words
        "sentence_variety": 1 / 5,  # five sentences, one opening ("the cat")
        "dialogue": 0.0,
        "length": 15 / 80,
        "repetition": 3 / 13,  # 13 word 3-grams, 3 distinct
        "long_words": 1.0,
        "special_characters": 1.0,
    })
    expected = (2 * 0.4 + 0.2 + 0 + 2 * 0.1875 + 2 * 3 / 13 + 1 + 1) / 10  # weights 2, 1, 1, 2, 2, 1, 1
    assert quality_score("The cat sat. " * 5) == pytest.approx(expected)


def test_direct_speech_and_varied_openings_score_full_marks():
    text = 'Tom said, "Hello, Sue!" Sue smiled.'
    components = quality_components(text)
    # 6 words, 5 distinct (capped at 1); sentences 'Tom said, "Hello, Sue!"' and 'Sue smiled.'; 4 distinct 3-grams.
    assert components == {"vocabulary": 1.0, "sentence_variety": 1.0, "dialogue": 1.0, "length": 6 / 80,
                          "repetition": 1.0, "long_words": 1.0, "special_characters": 1.0}
    assert quality_score(text) == pytest.approx((2 + 1 + 1 + 2 * 6 / 80 + 2 + 1 + 1) / 10)


def test_long_words_and_special_characters_are_penalised_by_their_share():
    # 40 words, one of 16 letters: share 0.025, half the 0.05 that scores 0.
    assert quality_components(" ".join(["cat"] * 39 + ["x" * 16]))["long_words"] == pytest.approx(0.5)
    # 100 characters, one '#': share 0.01, half the 0.02 that scores 0.
    assert quality_components("#" + "b" * 99)["special_characters"] == pytest.approx(0.5)
    assert quality_components("@@ " + "b" * 97)["special_characters"] == pytest.approx(0.0)


def test_length_is_full_between_80_and_400_words_and_falls_to_0_at_800():
    assert [length_component(n) for n in (0, 40, 80, 400, 600, 800, 1000)] == [0, 0.5, 1, 1, 0.5, 0, 0]


def test_a_text_without_words_scores_0():
    assert quality_score("") == 0 and quality_score("... !!!") == 0


def test_real_stories_score_high_and_junk_low(stories):
    scores = [quality_score(s) for s in stories]
    assert sum(scores) / len(scores) > 0.9
    assert min(scores) > 0.7 > quality_score(JUNK)
    assert all(0 <= v <= 1 for s in stories[:20] for v in quality_components(s).values())
    assert sum(WEIGHTS.values()) == 10


def test_quality_section_compares_generations_with_the_reference(tmp_path, stories):
    section = quality_section([JUNK, "The cat sat. " * 5], stories[:50], tmp_path)
    assert section["headline"]["quality"] < 0.6 < 0.9 < section["headline"]["reference_quality"]
    assert section["generations"]["components"]["sentence_variety"] == pytest.approx((1 + 1 / 5) / 2, abs=1e-4)
    assert (tmp_path / "quality_scores.png").stat().st_size > 1000 and section["charts"] == ["quality_scores.png"]
    assert "| repetition | 2 |" in section["markdown"] and "**quality score**" in section["markdown"]
    json.dumps(section)
    with pytest.raises(InputError, match="no generated stories"):
        quality_section([], stories, tmp_path)


def test_prepare_min_quality_drops_a_junk_document_and_the_report_names_the_rule(tmp_path, stories):
    source = tmp_path / "corpus.txt"
    source.write_text("\n<|endoftext|>\n".join(stories[:30] + [JUNK]), encoding="utf-8")
    summary = prepare(PrepareConfig(source=str(source), out=str(tmp_path / "out"), min_quality=0.7), progress=False)
    assert summary["removed"]["low_quality"] == 1 and summary["documents_out"] == 30
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    rule = next(r for r in report["rules"] if r["rule"] == "low_quality")
    assert rule["examples"][0]["text"].startswith("$$$ ###") and rule["examples"][0]["why"].startswith("quality 0.")
    assert "| low_quality | removed | 1 |" in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    off = prepare(PrepareConfig(source=str(source), out=str(tmp_path / "off")), progress=False)
    assert "low_quality" not in off["removed"] and off["documents_out"] == 31


def test_min_quality_outside_0_1_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="min_quality"):
        prepare(PrepareConfig(out=str(tmp_path / "out"), min_quality=1.5), progress=False)
