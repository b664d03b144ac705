"""Cleaning rules: each one's effect on a small hand-written text, mojibake repair on real damaged data, the report."""

from __future__ import annotations

import pytest

from talelab import paths
from talelab.data.clean import (
    clean_documents,
    non_ascii_ratio,
    normalize_nfc,
    normalize_whitespace,
    remove_invisible,
    remove_markup,
    repair_mojibake,
    too_long,
    too_much_non_ascii,
    too_short,
)
from talelab.data.sources import read_documents

LIMITS = {"min_chars": 10, "max_chars": 1000, "max_non_ascii": 0.02}


def test_mojibake_in_valid_head_is_repaired_to_real_punctuation():
    raw = read_documents(paths.TINYSTORIES_VALID)
    cleaned, report = clean_documents(raw, **LIMITS)
    before, after = "\n".join(raw), "\n".join(cleaned)
    assert before.count("â€™") == 62 and before.count("â€œ") == 80
    assert "â€" not in after
    assert after.count("\u2019") >= 62 and after.count("\u201c") >= 80 and after.count("\u201d") >= 80
    mojibake = next(r for r in report if r["rule"] == "mojibake")
    assert mojibake["changed"] == sum("â€" in d for d in raw)


def test_closing_quote_whose_last_byte_was_lost_is_restored_not_made_a_dagger():
    # E2 80 9D read as Windows-1252 drops 0x9D, which that code page leaves undefined; ftfy alone reads `â€ ` as †.
    text = "He said, â€œAre you scared?â€ Daisy nodded. â€œNo.â€\nShe didnâ€™t cry."
    expected = "He said, \u201cAre you scared?\u201d Daisy nodded. \u201cNo.\u201d\nShe didn\u2019t cry."
    assert repair_mojibake(text) == expected


def test_mojibake_repair_keeps_curly_quotes_and_clean_text_as_they_are():
    text = "\u201cHi,\u201d said Tom\u2019s mum \u2013 caf\u00e9 ni\u00f1o."
    assert repair_mojibake(text) == text


def test_nfc_composes_a_letter_and_its_combining_accent():
    assert normalize_nfc("cafe\u0301") == "caf\u00e9"


def test_zero_width_and_control_characters_go_but_newlines_and_tabs_stay():
    text = "a\u200bb\u200cc\u200dd\u2060e\ufefff\x00g\x07h\x1bi\x7fj\x85k\nl\tm"
    assert remove_invisible(text) == "abcdefghijk\nl\tm"


def test_markup_goes_and_its_words_stay():
    text = "# The Fox\n## Part *one*\n**Bold** fox <b>ran</b> to <a href='x'>the den</a>.<br/>__Done__<!-- note -->"
    assert remove_markup(text) == "The Fox\nPart one\nBold fox ran to the den.Done"


def test_markup_rule_leaves_comparisons_and_hashes_inside_lines_alone():
    text = "Tom was 5 < 6 and had #1 toy > all."
    assert remove_markup(text) == text


def test_whitespace_collapses_spaces_strips_lines_and_keeps_one_blank_line():
    text = "  Once  upon\ta\u00a0time. \n\n\n\n  The end.\t \n"
    assert normalize_whitespace(text) == "Once upon a time.\n\nThe end."


def test_drop_rules_say_why_and_keep_what_is_inside_the_limits():
    assert too_short("tiny", 10) == "4 characters < 10" and too_short("long enough", 10) is None
    assert too_long("x" * 11, 10) == "11 characters > 10" and too_long("x" * 10, 10) is None
    assert too_much_non_ascii("Жили-были дед да баба.", 0.02).endswith("non-ASCII > 2.0%")


def test_curly_quotes_and_dashes_do_not_count_as_non_ascii():
    assert non_ascii_ratio("\u201cHi\u201d \u2013 Tom\u2019s\u2026") == 0
    assert non_ascii_ratio("ab\u00e9\u00e9") == 0.5
    assert non_ascii_ratio("") == 0


def test_report_counts_each_rule_and_keeps_two_examples_around_the_first_change():
    prefix = "Once upon a time there was a dog who liked long walks in the sunny park near his home. "
    docs = [prefix + "He didnâ€™t stop.", prefix + "She wasnâ€™t sad.", prefix + "It isnâ€™t.", "Short."]
    kept, report = clean_documents(docs, **LIMITS)
    by_rule = {r["rule"]: r for r in report}
    assert kept == [prefix + "He didn\u2019t stop.", prefix + "She wasn\u2019t sad.", prefix + "It isn\u2019t."]
    assert [r["rule"] for r in report] == ["nfc", "mojibake", "invisible_characters", "markup", "whitespace",
                                           "too_short", "too_long", "non_ascii"]
    assert by_rule["mojibake"]["changed"] == 3 and len(by_rule["mojibake"]["examples"]) == 2
    first = by_rule["mojibake"]["examples"][0]
    assert first["before"].startswith("…") and "didnâ€™t" in first["before"] and "didn\u2019t" in first["after"]
    assert len(first["before"]) <= 122
    assert by_rule["too_short"]["removed"] == 1
    assert by_rule["too_short"]["examples"] == [{"why": "6 characters < 10", "text": "Short."}]
    assert by_rule["whitespace"]["changed"] == 0 and by_rule["whitespace"]["examples"] == []


def test_non_ascii_ratio_is_measured_after_repair():
    # Three broken characters per apostrophe would push this story over 2 %; repaired, it is one curly quote.
    story = "Once upon a time, a little bird named Tweety found a big red ball in the garden. Tweetyâ€™s pal came."
    kept, report = clean_documents([story], **LIMITS)
    assert len(kept) == 1 and report[-1]["removed"] == 0


# --- fast paths: what skips work must give what the work gives ----------------------------------------------------


@pytest.mark.slow
def test_mojibake_repair_without_ftfy_gives_what_ftfy_gives_on_every_shared_story():
    from talelab.data.clean import _ftfy

    stories = (read_documents(paths.TINYSTORIES_TRAIN) + read_documents(paths.TINYSTORIES_VALID)
               + read_documents("data/tinystories/train-head-lowercase.txt", format="lines"))
    assert sum("â€" in s for s in stories) > 400  # the fast repair really runs
    crafted = ["Tom &amp; Sue", "a\x1b[31mred\x1b[0m b", "one\rtwo", "plain ASCII story.", "caf\u00e9 â€™",
               "â€œHi!â€ â€“ she said â€¦", "Ã©tÃ©", "â€\x9d"]
    for text in stories + crafted:
        assert repair_mojibake(text) == _ftfy(text), text[:60]


def test_whitespace_and_markup_give_what_one_pass_of_each_pattern_gives():
    import re

    def reference_whitespace(text: str) -> str:  # the definition: every run of non-newline space becomes one
        text = re.sub(r" ?\n ?", "\n", re.sub(r"[^\S\n]+", " ", text))
        return re.sub(r"\n{3,}", "\n\n", text).strip()

    def reference_markup(text: str) -> str:
        from talelab.data.clean import _EMPHASIS, _HEADING, _HTML_TAG

        return _EMPHASIS.sub("", _HEADING.sub("", _HTML_TAG.sub("", text)))

    crafted = ["a \t b", "a\t b", "a \tb", "a\u00a0b", " \n x \n\n\n y ", "a  \n  b", "tab\tonly", "x \u2009 y\n ",
               "# Title\n*bold* __x__ <b>tag</b> <!-- c -->", "5 * 3 < 4 # not a heading"]
    for text in read_documents(paths.TINYSTORIES_VALID) + crafted:
        assert normalize_whitespace(text) == reference_whitespace(text), repr(text[:60])
        assert remove_markup(text) == reference_markup(text), repr(text[:60])


def test_invisible_characters_are_removed_wherever_they_stand():
    for invisible in "\u200b\u200c\u200d\u2060\ufeff\x00\x07\x0b\x1f\x7f\x85\x9f":
        assert remove_invisible(f"a{invisible}b\n\tc") == "ab\n\tc"
    visible = "plain \u201cquoted\u201d text\n\twith a tab"
    assert remove_invisible(visible) == visible
