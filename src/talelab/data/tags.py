"""The TinyStories narrative features, and the two that simple rules detect reliably.

TinyStories (Eldan & Li, 2023) asked GPT-4 for stories with some of six features. Two leave a surface trace a rule
can see: Dialogue (quoted speech) and MoralValue (an explicit lesson). The other four (BadEnding, Twist,
Foreshadowing, Conflict) need a classifier trained on labelled stories; rules for them would be guesses.
`story_prompt` writes a request for features in the TinyStories Instruct form that serving and evaluation share.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

from talelab.data.sources import iter_records
from talelab.errors import ConfigError, InputError

FEATURES = ("Dialogue", "BadEnding", "MoralValue", "Twist", "Foreshadowing", "Conflict")
RULE_FEATURES = ("Dialogue", "MoralValue")

# Speech: a straight or curly double-quoted span holding at least one word of two letters.
_QUOTED = re.compile(r"[\"“][^\"“”\n]*?[A-Za-z]{2}[^\"“”\n]*?[\"”]")
# A lesson stated outright, the way TinyStories' MoralValue stories state it.
_LESSON = re.compile(
    r"\b(learn(?:ed|t|s)? (?:that|a lesson|an important lesson|the lesson|to)|lesson|moral|"
    r"it is (?:important|good|better|not nice|not good) to|always remember|never forget|"
    r"(?:should|must) (?:always|never)|(?:is|was) (?:more )?important than)\b",
    re.IGNORECASE,
)


def has_dialogue(story: str) -> bool:
    return _QUOTED.search(story) is not None


def has_moral(story: str) -> bool:
    return _LESSON.search(story) is not None


RULES = {"Dialogue": has_dialogue, "MoralValue": has_moral}


def rule_features(story: str) -> list[str]:
    """The rule-detectable features the story shows, in FEATURES order."""
    return [name for name in RULE_FEATURES if RULES[name](story)]


# A record's tags in one byte, so that prepare counts them per split from a number per story: bit k for FEATURES[k],
# and CARRIES_TAGS when the record has the tag field at all (an empty list too: labelled as showing none).
CARRIES_TAGS = 1 << 7


def feature_bits(value, field: str) -> int:
    """The byte of a record's tag field value (None: the record has no such field); names outside FEATURES are not
    counted."""
    if value is None:
        return 0
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"--tag-field {field}: a record holds {value!r:.60}, not a list of feature names")
    return CARRIES_TAGS | sum(1 << FEATURES.index(name) for name in set(value) if name in FEATURES)


def story_prompt(features: list[str], words: list[str] = (), summary: str = "", bos: str = "",
                 beginning: str | None = None) -> str:
    """The TinyStoriesInstruct prompt: Features, Words and Summary lines, then 'Story:'; the story follows after a
    space (the space belongs to the story's first token, so the prompt's tokens are a prefix of prompt + story).

    With `beginning`, the text a model continues (serving, the tags suite): that prompt, a space and the beginning,
    or the beginning alone when nothing conditions it. Fine-tuning writes the same prompt, so what it learns to
    follow is what serving sends."""
    lines = [f"Features: {', '.join(dict.fromkeys(features))}"] if features else []
    lines += [f"Words: {', '.join(words)}"] if words else []
    lines += [f"Summary: {summary}"] if summary else []
    if beginning is not None and not lines:
        return bos + beginning
    prompt = bos + "".join(line + "\n" for line in lines) + "Story:"
    return prompt if beginning is None else f"{prompt} {beginning}"


_STORY_LINE = re.compile(r"(?:^|\n)Story:")


def story_part(prompt: str) -> str:
    """The part of a generation prompt that is story text: in story_prompt's Instruct form (Features / Words /
    Summary lines, then 'Story:') what follows 'Story:' (often nothing), else the whole prompt (a story's
    beginning, such as 'Once upon a time')."""
    match = _STORY_LINE.search(prompt)
    return prompt if match is None else prompt[match.end():].lstrip()


def story_of(prompt: str, continuation: str) -> str:
    """A generated story as a reader gets it: the prompt's story part, then what the model wrote after the prompt."""
    return (story_part(prompt) + continuation).lstrip()


def check_features(names, where: str) -> list[str]:
    """The names, each one of FEATURES (case as published), or a ConfigError naming the stranger."""
    names = list(names)
    for name in names:
        if name not in FEATURES:
            raise ConfigError(f"{where}: unknown feature '{name}' (choose from {', '.join(FEATURES)})")
    return names


# --- labelled records: TinyStories all_data and prepared splits that kept its fields ----------------------------

STORY_FIELDS = ("text", "story")  # where a record keeps its story: prepared splits, TinyStories all_data


def story_rows(path: Path) -> Iterator[dict]:
    """The records of a file (streamed by iter_records), the story in "text" whether the file calls it "text"
    (prepared splits, plain text) or "story" (TinyStories all_data): the first record decides."""
    errors = []
    for name in STORY_FIELDS:
        rows = iter_records(path, text_field=name)
        try:
            first = next(rows)
        except InputError as e:
            errors.append(str(e))
            continue
        return itertools.chain([first], rows)
    if errors[0] == errors[1]:  # the same either way: not about the field (bad JSON, no records, ...)
        raise InputError(errors[0])
    raise InputError(f"{path}: record 1: no string field {' or '.join(repr(n) for n in STORY_FIELDS)} (expected "
                     f"a prepared split, TinyStories all_data records or text)")


def labels_of(row: dict, where: str) -> tuple[list[str] | None, list[str], str]:
    """A record's features (None when it carries none), required words and summary, from all_data's
    `instruction` {"features", "words"} and `summary`, or from top-level "features" / "words"."""
    instruction = row.get("instruction") if isinstance(row.get("instruction"), dict) else {}
    features = instruction.get("features", row.get("features"))
    words = instruction.get("words", row.get("words")) or []
    summary = row.get("summary") or ""
    for name, value in (("features", [] if features is None else features), ("words", words)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"{where}: '{name}' must be a list of strings (found {value!r:.60})")
    if not isinstance(summary, str):
        raise InputError(f"{where}: 'summary' must be a string (found {summary!r:.60})")
    return features, words, summary
