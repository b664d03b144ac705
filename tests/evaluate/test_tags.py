"""Tag adherence and `talelab tags train`.

The shared data has no labelled TinyStories all_data file, so these tests label real shared stories themselves:
Dialogue and MoralValue by talelab's rules, and BadEnding by a crude word rule on the last sentence. They check the
machinery (reading, training, held-out scoring, saving, loading, using the classifier in the report section), NOT
how well a classifier trained on GPT-4's real labels would do: learning back a rule is easier than learning GPT-4.
"""

from __future__ import annotations

import json
import re

import pytest

from talelab import paths
from talelab.cli import main
from talelab.config import SamplingConfig
from talelab.data.sentences import split_sentences
from talelab.data.tags import FEATURES, has_dialogue, rule_features
from talelab.errors import InputError
from talelab.evaluate.completion import completer
from talelab.evaluate.tags import load_tag_classifier, predict_features, read_labelled, tags_section, wilson
from talelab.models.storage import load_model

SAD_END = re.compile(r"\b(sad|cried|cry|hurt|lost|broke|never)\b", re.IGNORECASE)  # machinery only, see above


def stand_in_label(story: str) -> list[str]:
    sad = SAD_END.search(split_sentences(story)[-1]) is not None
    return rule_features(story) + (["BadEnding"] if sad else [])


@pytest.fixture(scope="module")
def labelled(shared, tmp_path_factory):
    """600 real stories in all_data JSONL form, labelled by rules (see the module docstring)."""
    text = (shared / paths.TINYSTORIES_TRAIN).read_text(encoding="utf-8")
    stories = [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:600]
    path = tmp_path_factory.mktemp("labelled") / "all_data.jsonl"
    path.write_text("".join(json.dumps({"story": s, "instruction": {"words": [], "features": stand_in_label(s)},
                                        "summary": "", "source": "rules"}) + "\n" for s in stories))
    return path


@pytest.fixture(scope="module")
def classifier(labelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("tags") / "classifier"
    assert main(["tags", "train", "--data", str(labelled), "--out", str(out), "--min-df", "1"]) == 0
    return out


@pytest.mark.slow
def test_tags_train_writes_a_json_classifier_scored_on_held_out_labels(classifier, labelled):
    for name in ("classifier.json", "report.md", "report.json", "f1.png"):
        assert (classifier / name).is_file(), name
    report = json.loads((classifier / "report.json").read_text())
    assert report["train_stories"] == 480 and report["test_stories"] == 120
    features = report["features"]
    # rules put quotes in every Dialogue story: TF-IDF with quote tokens learns that back
    assert features["Dialogue"]["classifier"]["f1"] > 0.8
    assert features["Dialogue"]["rule"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}  # the labels' own rule
    assert features["BadEnding"]["classifier"] is not None and features["BadEnding"]["rule"] is None
    for name in ("Twist", "Foreshadowing", "Conflict"):  # never labelled here: reported, not guessed
        assert features[name]["classifier"] is None and features[name]["train_positives"] == 0
    assert "not trained" in (classifier / "report.md").read_text()
    saved = load_tag_classifier(classifier)
    assert set(saved["features"]) == {"Dialogue", "MoralValue", "BadEnding"}
    stories, labels = read_labelled(labelled)
    predicted = predict_features(saved, stories[:50])
    agree = sum(p == ("Dialogue" in y) for p, y in zip(predicted["Dialogue"], labels[:50]))
    assert agree >= 45  # mostly training stories: it fits them


def test_a_record_without_story_or_with_an_unknown_feature_is_a_one_line_error_naming_the_line(tmp_path, capsys):
    good = json.dumps({"story": "Once upon a time.", "instruction": {"features": ["Dialogue"]}})
    no_story = tmp_path / "no_story.jsonl"
    no_story.write_text(f"{good}\n\n" + json.dumps({"instruction": {"features": []}}) + "\n")
    with pytest.raises(InputError, match=r"no_story\.jsonl:3: no string field 'story'"):
        read_labelled(no_story)
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(f"{good}\n" + json.dumps({"story": "A tale.", "instruction": {"features": ["Sadness"]}}))
    assert main(["tags", "train", "--data", str(unknown), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown.jsonl: record 2: unknown feature 'Sadness'" in err and err.count("\n") == 1
    array = tmp_path / "data00.json"  # all_data's own form: one JSON array
    array.write_text(json.dumps([json.loads(good), {"story": "x", "instruction": {}}]))
    with pytest.raises(InputError, match=r"data00\.json: record 2: no \"instruction\""):
        read_labelled(array)


def test_the_section_counts_requested_and_baseline_shares_by_rule(tmp_path):
    def complete(prompts, config=None):  # a stand-in writer that obeys Dialogue requests only
        return [' Tom said, "Hello!"' if "Dialogue" in p else " Tom ran home." for p in prompts]

    result = tags_section(complete, tmp_path, stories_per_feature=4, progress=False)
    dialogue = result["features"]["Dialogue"]
    assert (dialogue["method"], dialogue["requested"], dialogue["baseline"]) == ("rule", 1.0, 0.0)
    assert dialogue["requested_ci95"] == pytest.approx(wilson(4, 4)) and wilson(4, 4)[1] == pytest.approx(1.0)
    assert wilson(0, 4)[0] == 0.0 and wilson(0, 4)[1] == pytest.approx(0.48990, abs=1e-4)  # 4 / (4 + z^2)
    assert result["features"]["MoralValue"]["requested"] == 0.0
    for name in ("BadEnding", "Twist", "Foreshadowing", "Conflict"):
        assert result["features"][name] == {"method": None, "note": "no classifier: not measured"}
    assert result["markdown"].count("no classifier: not measured") == 4
    assert result["stories"]["Dialogue"][0] == 'Once upon a time Tom said, "Hello!"'
    assert (tmp_path / "tags.png").is_file() and result["charts"] == ["tags.png"]


@pytest.mark.slow
def test_the_section_on_stories260k_uses_rules_and_the_classifier(stories260k, classifier, tmp_path):
    model, tokenizer, _ = load_model(stories260k)
    config = SamplingConfig(temperature=0.8, max_new_tokens=60, seed=0)
    result = tags_section(completer(model, tokenizer, config), tmp_path, stories_per_feature=3,
                          classifier=str(classifier), progress=False, config=config)
    assert set(result["stories"]) == {"baseline", *FEATURES}
    assert all(len(texts) == 3 and texts[0].startswith("Once upon a time") for texts in result["stories"].values())
    dialogue = result["features"]["Dialogue"]
    assert dialogue["requested"] == sum(map(has_dialogue, result["stories"]["Dialogue"])) / 3
    bad_ending = result["features"]["BadEnding"]
    assert bad_ending["method"] == "classifier"
    shown = predict_features(load_tag_classifier(classifier), result["stories"]["BadEnding"])["BadEnding"]
    assert bad_ending["requested"] == sum(shown) / 3
    assert result["features"]["Twist"]["note"] == "the classifier was not trained on this feature: not measured"
    json.dumps(result)


def test_a_folder_of_all_data_files_is_read_in_order_up_to_a_limit(labelled, tmp_path):
    lines = labelled.read_text().splitlines()
    (tmp_path / "data00.jsonl").write_text("\n".join(lines[:5]))
    (tmp_path / "data01.json").write_text(json.dumps([json.loads(line) for line in lines[5:10]]))
    stories, labels = read_labelled(tmp_path)
    assert stories == [json.loads(line)["story"] for line in lines[:10]]
    assert labels[0] == json.loads(lines[0])["instruction"]["features"]
    assert len(read_labelled(tmp_path, limit=7)[0]) == 7


def test_tags_train_on_a_prepared_directory_learns_from_its_labelled_stories(tagged_all_data, tmp_path):
    source, prepared = tagged_all_data
    labelled = [r for r in json.loads(source.read_text(encoding="utf-8")) if r["instruction"]["features"]]
    split = prepared / "train.jsonl"
    stories, labels = read_labelled(split)
    assert stories == [json.loads(line)["text"] for line in split.read_text(encoding="utf-8").splitlines()]
    assert labels == [r["instruction"]["features"] for r in labelled]
    out = tmp_path / "classifier"
    assert main(["tags", "train", "--data", str(prepared), "--out", str(out), "--min-df", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["train_stories"] + report["test_stories"] == len(labelled) == 25
    for name, row in report["features"].items():
        assert row["train_positives"] + row["test_positives"] == sum(name in r["instruction"]["features"]
                                                                     for r in labelled), name
    assert report["features"]["Dialogue"]["classifier"] is not None  # 18 labelled stories: trained
    assert "Dialogue" in load_tag_classifier(out)["features"]
