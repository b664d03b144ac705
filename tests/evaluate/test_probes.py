"""Probes: the bundled sets, the scoring rule on hand-made completions, and stories260K on all three sets."""

from __future__ import annotations

import json

import pytest

from talelab.config import SamplingConfig
from talelab.errors import ConfigError, InputError
from talelab.evaluate.completion import completer
from talelab.evaluate.probes import (DEFAULT_SETS, answer_window, bundled_sets, load_probe_set, passes,
                                     probes_section)
from talelab.models.storage import load_model


def test_bundled_sets_hold_at_least_ten_prompts_each_with_answers():
    assert set(DEFAULT_SETS) <= set(bundled_sets())
    for name in DEFAULT_SETS:
        probe_set = load_probe_set(name)
        assert len(probe_set["probes"]) >= 10
        assert all(p["answers"] and not p["prompt"].endswith(" ") for p in probe_set["probes"])


def test_an_answer_counts_only_in_the_first_words_of_the_first_sentence():
    assert answer_window(' library. Then she read a book.', 5) == "library."
    assert answer_window(" big red shiny toy store today", 3) == "big red shiny"
    assert passes(" library. Then she read.", ["store", "library"], 5)
    assert passes(' Moo!" said the cow.', ["moo"], 5)  # case is ignored, punctuation is not part of a word
    assert passes(" the blue box under the bed.", ["blue box"], 5)  # answers may be several words
    assert not passes(" park. The library was big.", ["library"], 5)  # second sentence
    assert not passes(" big red shiny toy store", ["store"], 3)  # beyond max_words
    assert not passes(" libraries and shops.", ["library"], 5)  # whole words only
    assert not passes("", ["library"], 5)


def test_stories260k_passes_some_factual_probes_and_every_completion_is_shown(stories260k, tmp_path):
    model, tokenizer, _ = load_model(stories260k)
    result = probes_section(completer(model, tokenizer, SamplingConfig()), tmp_path)
    sets = {s["name"]: s for s in result["sets"]}
    assert list(sets) == list(DEFAULT_SETS)
    factual = sets["factual"]
    print(f"stories260K factual probes passed: {factual['passed']}/{len(factual['probes'])}")
    assert factual["passed"] >= 1  # measured: 2 of 12 ("flew up into the sky", "wagged its tail")
    assert result["accuracy"]["factual"] == factual["passed"] / len(factual["probes"])
    for s in result["sets"]:
        for probe in s["probes"]:
            assert probe["passed"] == passes(probe["completion"], probe["answers"], s["max_words"])
            assert probe["prompt"] in result["markdown"]
    assert result["charts"] == ["probes.png"]
    assert (tmp_path / "probes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(result)  # the report stores it as JSON


def test_a_probe_file_of_your_own_works_and_bad_sets_are_one_line_errors(tmp_path):
    own = tmp_path / "colours.json"
    own.write_text(json.dumps({"name": "colours", "max_words": 2, "probes": [
        {"prompt": "The sky is", "answers": ["blue"]}, {"prompt": "Grass is", "answers": ["green"]}]}))

    def complete(prompts, config=None):  # a stand-in writer: answers the first probe, misses the second
        return [{"The sky is": " blue today.", "Grass is": " very soft."}[p] for p in prompts]

    result = probes_section(complete, tmp_path, sets=[str(own)])
    assert result["accuracy"] == {"colours": 0.5}
    with pytest.raises(ConfigError, match="no-such-set"):
        probes_section(complete, tmp_path, sets=["no-such-set"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"probes": [{"prompt": "A", "answers": ["a"]}, {"prompt": "B"}]}))
    with pytest.raises(InputError, match=r"bad\.json: probe 1"):
        probes_section(complete, tmp_path, sets=[str(bad)])
