"""The Instruct prompt form and the story a reader gets from a prompt and what a model wrote after it."""

from __future__ import annotations

import pytest

from talelab.data.tags import story_of, story_part, story_prompt


@pytest.mark.parametrize("prompt,part", [
    ("Once upon a time", "Once upon a time"),  # a plain prompt is the story's beginning
    (story_prompt(["Dialogue", "Twist"]), ""),  # "Features: Dialogue, Twist\nStory:"
    (story_prompt(["Dialogue"], ["ball"], beginning="Tom had a ball"), "Tom had a ball"),
    ("Summary: A dog finds a bone.\nStory:\nThe dog dug.", "The dog dug."),
    ("The Story: of a cat", "The Story: of a cat"),  # 'Story:' inside a line starts no story
])
def test_the_story_part_of_a_prompt_is_what_follows_its_story_line(prompt, part):
    assert story_part(prompt) == part


def test_a_story_is_the_prompts_story_part_and_the_continuation_without_the_space_between():
    assert story_of("Features: Dialogue\nStory:", ' "Hi," said Tom.') == '"Hi," said Tom.'
    assert story_of("Features: Dialogue\nStory: Once", " upon a time.") == "Once upon a time."
    assert story_of("Once upon a time", ", there was a cat.") == "Once upon a time, there was a cat."
