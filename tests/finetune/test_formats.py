"""Prompt templates: TinyStories Instruct prompts (with labels from all_data records, raw or prepared, or derived by
rules), the Alpaca template with its EOS placeholder, User/Assistant turns (also from one `conversation` string) and
the tokenizer's own chat template; plain text from a named field."""

from __future__ import annotations

import json

import pytest

from talelab.config import PrepareConfig
from talelab.data.prepare import prepare
from talelab.data.tags import story_prompt
from talelab.errors import InputError
from talelab.finetune.base import load_tokenizer_of
from talelab.finetune.formats import build_examples, clean_sonnets, parse_instruct_story, words_used


@pytest.fixture(scope="module")
def tokenizer(stories260k_hf):
    return load_tokenizer_of(str(stories260k_hf))


def test_story_prompt_in_the_instruct_form():
    assert story_prompt(["Dialogue", "Twist"], ["hang", "foot", "cute"], "A cat hangs a sock.", "<s>") == (
        "<s>Features: Dialogue, Twist\nWords: hang, foot, cute\nSummary: A cat hangs a sock.\nStory:")
    assert story_prompt([]) == "Story:"
    # what serving and the tags suite send is the training prompt, then the story's beginning
    assert story_prompt(["Dialogue"], beginning="Once") == story_prompt(["Dialogue"]) + " Once"


def test_words_used_counts_required_words_and_their_inflections():
    story = "Tom jumped over the log. He was happy and hung his hat."
    assert words_used(story, ["jump", "log", "cute", "hat"]) == 3
    assert words_used(story, []) == 0


def test_instruct_text_blocks_are_parsed():
    block = "Features: Dialogue\nWords: ball, red\nSummary: Sam finds a ball.\nStory: Sam saw a red ball.\n\"Mine!\""
    assert parse_instruct_story(block) == {"features": ["Dialogue"], "words": ["ball", "red"],
                                           "summary": "Sam finds a ball.", "story": "Sam saw a red ball.\n\"Mine!\""}


def test_rule_features_on_unlabelled_stories_and_prompt_is_a_prefix(tokenizer):
    examples, note = build_examples("stories-tags", "data/tinystories/train-head.txt", tokenizer)
    assert len(examples) == 2317 and "derived by rules" in note
    with_dialogue = [e for e in examples if "Dialogue" in e["features"]]
    assert with_dialogue and all('"' in e["completion"] or "“" in e["completion"] for e in with_dialogue)
    first = examples[0]
    assert first["prompt"].startswith("<s>") and first["prompt"].endswith("Story:")
    ids = tokenizer(first["prompt"], add_special_tokens=False)["input_ids"]
    both = tokenizer(first["prompt"] + first["completion"], add_special_tokens=False)["input_ids"]
    assert both[: len(ids)] == ids  # the story's tokens start right where the prompt's end


def test_a_prepared_directory_of_all_data_gives_prompts_with_exactly_the_source_labels(tokenizer, tagged_all_data):
    source, prepared = tagged_all_data
    records = json.loads(source.read_text(encoding="utf-8"))
    labelled = [r for r in records if r["instruction"]["features"]]  # prepare --require-field kept these
    split = prepared / "train.jsonl"
    texts = [json.loads(line)["text"] for line in split.read_text(encoding="utf-8").splitlines()]
    examples, note = build_examples("stories-tags", str(prepared), tokenizer, derive_words=3)
    assert len(examples) == len(labelled) == len(texts) == 25
    for example, record, text in zip(examples, labelled, texts):
        instruction = record["instruction"]
        assert (example["features"], example["words"]) == (instruction["features"], instruction["words"])
        assert example["prompt"] == story_prompt(instruction["features"], instruction["words"], record["summary"],
                                                 "<s>")
        assert example["completion"] == " " + text
    assert any("Twist" in e["features"] for e in examples)  # a label that no rule gives
    assert note == f"features: as labelled in {split} (25 stories); required words: up to 3 per unlabelled story, " \
                   "drawn from the story itself"
    raw, raw_note = build_examples("stories-tags", str(source), tokenizer)  # the all_data JSON array itself
    assert [e["features"] for e in raw] == [r["instruction"]["features"] for r in records]  # [] is a label too
    assert raw_note == f"features: as labelled in {source} (40 stories)"


def test_records_without_labels_get_rule_features_and_the_note_counts_both(tokenizer, tmp_path):
    data = tmp_path / "mixed.jsonl"
    rows = [{"text": 'Tom said, "Hi!" Then he ran home.', "instruction": {"features": ["Twist"], "words": ["run"]}},
            {"text": "Sue learned to share her red ball.", "summary": "Sue shares."}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples, note = build_examples("stories-tags", str(data), tokenizer)
    assert [e["features"] for e in examples] == [["Twist"], ["MoralValue"]]
    assert examples[1]["prompt"] == "<s>Features: MoralValue\nSummary: Sue shares.\nStory:"
    assert note.startswith("features: 1 of 2 stories carry no labels; their features were derived by rules")
    assert note.endswith(f"the other 1 as labelled in {data}")


def test_features_that_prepare_tag_rules_wrote_are_not_called_labels(tokenizer, tmp_path):
    source = tmp_path / "mixed.jsonl"
    rows = [{"text": 'Tom said, "Hi!" Then he ran home to his mom and dad.', "instruction": {"features": ["Twist"]}},
            {"text": "Sue learned to share her red ball with her little brother."}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prepare(PrepareConfig(source=str(source), out=str(tmp_path / "out"), tag_rules=True, min_chars=0,
                          val_fraction=0, test_fraction=0), progress=False)
    examples, note = build_examples("stories-tags", str(tmp_path / "out" / "train.jsonl"), tokenizer)
    assert sorted(e["features"] for e in examples) == [["MoralValue"], ["Twist"]]
    assert note.startswith("features: 1 of 2 stories carry no labels; their features were derived by rules")


def test_alpaca_rows_lose_the_eos_placeholder(tokenizer):
    examples, note = build_examples("instruct", "data/instruct/dolly-subset.jsonl", tokenizer)
    assert len(examples) == 151 and "template alpaca" in note
    assert all("###eos_token###" not in e["completion"] for e in examples)
    assert examples[0]["prompt"].endswith("### Response:") and examples[0]["completion"].startswith("\nThe American")


def test_user_assistant_and_chat_templates(tokenizer, tmp_path):
    data = tmp_path / "chat.jsonl"
    messages = [{"role": "user", "content": "Tell me about cats."}, {"role": "assistant", "content": "Cats purr."},
                {"role": "user", "content": "And dogs?"}, {"role": "assistant", "content": "Dogs bark."}]
    data.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    (example,), note = build_examples("instruct", str(data), tokenizer)
    assert "template user-assistant" in note  # no chat template in this tokenizer
    assert example == {"prompt": "<s>User: Tell me about cats.\nAssistant: Cats purr.\nUser: And dogs?\nAssistant:",
                       "completion": " Dogs bark.", "template": "user-assistant"}
    tokenizer.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
    try:
        (example,), note = build_examples("instruct", str(data), tokenizer)
    finally:
        tokenizer.chat_template = None
    assert "template chat" in note
    assert example["prompt"] == messages[:3] and example["completion"] == [messages[3]]


POEM_REQUEST = ("User: Can you write me a poem about faults and love?\nAssistant: Sure, here's a poem about faults and "
                "love:\n\nLet me not to the marriage of true minds\nAdmit impediments.")


def test_conversation_rows_become_prompt_and_completion(tokenizer, tmp_path):
    data = tmp_path / "poetry-instructions.jsonl"
    follow_up = POEM_REQUEST + "\nUser: Shorter, please.\nAssistant: Love is not love."
    data.write_text(json.dumps({"conversation": POEM_REQUEST}) + "\n" + json.dumps({"conversation": follow_up}) + "\n",
                    encoding="utf-8")
    (first, second), note = build_examples("instruct", str(data), tokenizer)
    assert "template user-assistant" in note  # turns kept as turns (this tokenizer has no chat template)
    assert first == {"prompt": "<s>User: Can you write me a poem about faults and love?\nAssistant:",
                     "completion": " Sure, here's a poem about faults and love:\n\nLet me not to the marriage of true "
                                   "minds\nAdmit impediments.", "template": "user-assistant"}
    # several turns: the earlier ones are the prompt, the last Assistant turn alone is the completion
    assert second["prompt"] == ("<s>User: Can you write me a poem about faults and love?\nAssistant: Sure, here's a "
                                "poem about faults and love:\n\nLet me not to the marriage of true minds\nAdmit "
                                "impediments.\nUser: Shorter, please.\nAssistant:")
    assert second["completion"] == " Love is not love."
    (alpaca, _), _ = build_examples("instruct", str(data), tokenizer, template="alpaca")
    assert "### Instruction:\nCan you write me a poem about faults and love?\n\n### Response:" in alpaca["prompt"]
    assert alpaca["completion"].startswith("\nSure, here's a poem")


@pytest.mark.parametrize("conversation", ["Assistant: Hello.", "Tell me a poem.\nUser: A poem?\nAssistant: No.",
                                          "User: A poem?", "User: A poem?\nAssistant:", "User: Hi\nUser: A poem?"])
def test_a_conversation_that_does_not_parse_names_file_and_line(tokenizer, tmp_path, conversation):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"conversation": POEM_REQUEST}) + "\n" + json.dumps({"conversation": conversation})
                    + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=rf"^{data}:2: 'conversation' ") as e:
        build_examples("instruct", str(data), tokenizer)
    assert "\n" not in str(e.value)


def test_lm_reads_documents_from_a_named_field(tokenizer, shared, tmp_path):
    poems = clean_sonnets((shared / "data/poetry/shakespeare-sonnets.txt").read_text(encoding="utf-8"))[:3]
    data = tmp_path / "poems.jsonl"  # Poetry-Foundation-Poems' layout: the poem in 'Poem'
    data.write_text("".join(json.dumps({"Title": f"Sonnet {i}", "Poem": p}) + "\n" for i, p in enumerate(poems)),
                    encoding="utf-8")
    examples, note = build_examples("lm", str(data), tokenizer, text_field="Poem")
    assert examples == [{"text": "<s>" + p} for p in poems] and note == "lm: 3 documents from poems.jsonl"
    with pytest.raises(InputError, match=rf"{data}:1: no string field 'text' .*set --text-field"):
        build_examples("lm", str(data), tokenizer)
