"""What a request may ask, and how `/v1/completions` answers: OpenAI's prompt forms, echo and legacy logprobs.

A completions prompt is a string, a list of strings, a list of token ids or a list of such lists; each prompt gets
its own `n` choices, numbered prompt by prompt. A text prompt is encoded after the beginning-of-story token (BOS),
as talelab reads stories; token ids are taken as they are (begin them with BOS to read them as talelab does).
`echo` puts the prompt's text before each choice's; with `logprobs` the prompt's tokens come first in the logprobs,
each with its log-probability given the tokens before it (the first token, which nothing precedes, has null), from
one forward pass over the whole prompt, the model call `talelab eval loss` makes. `max_tokens: 0` with `echo` scores
a prompt without writing, as lm-evaluation-harness's loglikelihood tasks ask.

Requests are strict: a field talelab does not implement is a 400 that names it, never silently dropped. A few
OpenAI fields that clients send with their neutral value (`presence_penalty: 0`, `best_of: 1`...) pass with that
value only. A string holding a lone UTF-16 surrogate (JSON `"\\ud800"`) is not text: a 400 naming its field.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, field_validator
from pydantic_core import PydanticCustomError

from talelab.data.tags import FEATURES
from talelab.serve.batching import Scored, Story

Feature = Literal[FEATURES]

# OpenAI takes one stop string or a list of up to 4
StopStrings = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=4),
                        BeforeValidator(lambda value: [value] if isinstance(value, str) else value)]


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def holds_surrogate(value) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(holds_surrogate(k) or holds_surrogate(v) for k, v in value.items())
    return isinstance(value, list) and any(holds_surrogate(v) for v in value)


class Strict(BaseModel):
    """A request part that refuses fields it does not know and strings that are not Unicode text."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def no_lone_surrogates(cls, value):
        # JSON may escape half of a UTF-16 pair on its own; no tokenizer can read it (it failed as a 500)
        if holds_surrogate(value):
            raise PydanticCustomError("lone_surrogate", "holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not "
                                      "text; send valid Unicode")
        return value


def only_neutral(neutral: tuple, hint: str):
    """An OpenAI field talelab does not implement, accepted only at a value that changes nothing."""
    def check(value):
        if value not in neutral:
            raise PydanticCustomError("not_implemented", f"talelab does not implement this field{hint}; leave it out")
        return value

    return Annotated[Any, AfterValidator(check)]


PenaltyOff = only_neutral((0, None), " (use repetition_penalty)")
NoLogitBias = only_neutral(({}, None), "")
NoSuffix = only_neutral(("", None), " (a story model only continues)")
BestOfOne = only_neutral((1, None), " (use n)")


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """The fields completions and chat share."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    stop: StopStrings = []
    seed: int | None = Field(None, ge=0, le=2**62)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    features: Annotated[list[Feature], Field(max_length=len(FEATURES))] = []
    user: str | None = None  # OpenAI's tag for abuse monitoring: it changes no answer, and talelab keeps no record
    presence_penalty: PenaltyOff = None
    frequency_penalty: PenaltyOff = None
    logit_bias: NoLogitBias = None


def is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def prompt_forms(value) -> list[str | list[int]]:
    """OpenAI's four prompt forms as one list of prompts, each a text or a list of token ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value) or all(is_token_id(v) for v in value):
            return value if isinstance(value[0], str) else [value]
        if all(isinstance(v, list) and v and all(is_token_id(i) for i in v) for v in value):
            return value
    raise PydanticCustomError("prompt_form", "expected a string, a list of strings, a list of token ids or a list of "
                              "lists of token ids, none of them empty")


class CompletionRequest(Sampling):
    prompt: Annotated[list[str | list[int]], PlainValidator(
        prompt_forms, json_schema_input_type=str | list[str] | list[int] | list[list[int]])]
    max_tokens: int | None = Field(None, ge=0)  # 0: score the prompt (with echo), write nothing
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: NoSuffix = None
    best_of: BestOfOne = None


def chosen_logprob(token: int, options: list[tuple[int, str, float]]) -> float | None:
    """A generated token's logprob, from its step's alternatives; a sampled token outside them has none."""
    return next((value for i, _, value in options if i == token), None)


def completion_logprobs(story: Story) -> dict:
    """OpenAI's legacy completions form: parallel lists of token texts, logprobs, alternatives and text offsets; with
    echo the prompt's tokens come first (its first token has no logprob and no alternatives: nothing precedes it)."""
    prompt = story.prompt or Scored([], [], [])
    pieces = prompt.pieces + story.pieces
    chosen = [chosen_logprob(token, options) for token, options in zip(story.tokens, story.alternatives)]
    options = prompt.alternatives + story.alternatives
    return {"tokens": pieces, "token_logprobs": prompt.logprobs + chosen,
            "top_logprobs": [None if o is None else {text: value for _, text, value in o} for o in options],
            "text_offset": list(accumulate((len(p) for p in pieces), initial=0))[:-1]}
