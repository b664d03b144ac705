"""The TinyStories narrative features, and the two that simple rules detect reliably.

TinyStories (Eldan & Li, 2023) asked GPT-4 for stories with some of six features. Two leave a surface trace a rule
can see: Dialogue (quoted speech) and MoralValue (an explicit lesson). The other four (BadEnding, Twist,
Foreshadowing, Conflict) need a classifier trained on labelled stories; rules for them would be guesses.
`story_prompt` writes a request for features in the TinyStories Instruct form that serving and evaluation share.
"""

from __future__ import annotations

import re

from talelab.errors import ConfigError

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


def story_prompt(beginning: str, features: list[str]) -> str:
    """The text a model continues: the beginning alone, or after its features in TinyStories Instruct form."""
    if not features:
        return beginning
    return f"Features: {', '.join(dict.fromkeys(features))}\nStory: {beginning}"


def check_features(names, where: str) -> list[str]:
    """The names, each one of FEATURES (case as published), or a ConfigError naming the stranger."""
    names = list(names)
    for name in names:
        if name not in FEATURES:
            raise ConfigError(f"{where}: unknown feature '{name}' (choose from {', '.join(FEATURES)})")
    return names
