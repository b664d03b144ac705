"""An OpenAI-compatible API over talelab models, and the story playground page.

Routes: `GET /v1/models` (and `/v1/models/{name}`), `POST /v1/completions`, `POST /v1/chat/completions` (both stream
server-sent events with `"stream": true`, and end with a usage chunk when `stream_options` asks for it),
`GET /health` (with batching counters), `GET /` (the playground). What a request may hold, and the completions forms
(prompt lists, token ids, echo, scoring with `max_tokens: 0`), are in `talelab.serve.completions`.

A story model has no dialogue format: a chat request's story beginning is its last user message, and the other
messages are ignored; the answer is the continuation. An instruct model (fine-tuned with `talelab finetune --task
instruct`, which stores its template, or one with a chat template of its own) gets every message through its chat
template, in the form it was trained on. Beyond OpenAI's fields a request may set `top_k`,
`repetition_penalty` and `features` (of the six TinyStories features), which enter the prompt in the TinyStories
Instruct form `Features: Dialogue, Twist\\nStory: <beginning>`; only models tuned on that form have learned it.
`logprobs` report the model's top alternatives after the repetition penalty, before temperature; a sampled token
outside them has no logprob (null); the end-of-story token is a token of the story (its text is empty). When
streaming, they arrive with each story's last chunk.

Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 for a body that is not JSON or
breaks the schema or a limit (a prompt longer than the context included) or names a field talelab does not
implement, 404 for a model that is not served, 413 for a body over 1 MiB, 429 when `max_concurrent` stories are being
written. Models are named on the command line (NAME=PATH: a talelab model or run directory, a Hugging Face causal LM
directory or a PEFT adapter directory) and loaded from safetensors; a request picks one by name and can never name a
path.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import jinja2
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import Field
from starlette.exceptions import HTTPException

from talelab.config import DecodeConfig, SamplingConfig, ServeConfig
from talelab.data.tags import story_prompt
from talelab.errors import ConfigError
from talelab.generate import load_decoder
from talelab.serve.batching import Batcher, Job, Story, events
from talelab.serve.completions import (APIError, CompletionRequest, Sampling, Strict, chosen_logprob,
                                       completion_logprobs)
from talelab.tokenizer import Tokenizer

MAX_BODY_BYTES = 1 << 20  # far above any prompt the character cap lets through
STATIC = Path(__file__).parent / "static"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # a participant's name: like every message but the last user one, a story model skips it


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=5)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


@dataclass
class Served:
    """A model offered under a name, its tokenizer, and (while the app runs) its batching worker."""

    name: str
    model: torch.nn.Module  # any family: every one decodes left-padded batches
    tokenizer: Tokenizer
    batcher: Batcher | None = None


def load_models(specs: list[str], decode: DecodeConfig = DecodeConfig()) -> dict[str, Served]:
    """NAME=PATH (or a bare PATH, named after its folder) for each model to serve, loaded as `decode` says."""
    if not specs:
        raise ConfigError("serve: name at least one model with --model NAME=PATH")
    served: dict[str, Served] = {}
    for spec in specs:
        name, given, path = spec.partition("=")
        if not given:
            name, path = Path(spec).resolve().name, spec
        if not MODEL_NAME.fullmatch(name):
            raise ConfigError(f"--model {spec}: the name '{name}' must be 1 to 64 letters, digits, '.', '_' or '-'")
        if name in served:
            raise ConfigError(f"--model {spec}: the name '{name}' is given twice")
        model, tokenizer, _ = load_decoder(path, decode)
        served[name] = Served(name, model, tokenizer)
    return served


def message_text(message: Message) -> str:
    content = message.content
    return content if isinstance(content, str) else "".join(part.text for part in content or [])


def chat_prompt(served: Served, messages: list[Message]) -> str:
    """What the model continues: the conversation through an instruct model's chat template, or, for a story
    model, the last user message's text as the beginning of a story."""
    if served.tokenizer.chat_template:
        try:
            return served.tokenizer.chat_prompt([{"role": m.role, "content": message_text(m)} for m in messages])
        except jinja2.TemplateError as e:  # templates may refuse a conversation (e.g. roles that do not alternate)
            raise APIError(400, f"messages: {served.name}'s chat template refused them ({e})", "messages") from None
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise APIError(400, "messages: a story model continues the last user message, and there is none",
                       "messages")
    return message_text(users[-1])


def chat_logprobs(story: Story) -> dict:
    def entry(text: str, value: float | None) -> dict:
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(piece, chosen_logprob(token, options)),
                         "top_logprobs": [entry(text, value) for _, text, value in options]}
                        for token, piece, options in zip(story.tokens, story.pieces, story.alternatives)]}


def sse(payload) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@dataclass(frozen=True)
class Shape:
    """How an endpoint words its answers: OpenAI's completions form or its chat form."""

    id_prefix: str
    object: str
    chunk_object: str
    logprobs: Callable[[Story], dict]
    message: Callable[[str], dict]  # a finished story's text as a choice's fields
    delta: Callable[[str | None], dict]  # a streamed piece as a chunk choice's fields (None: the closing chunk)
    opening: dict | None = None  # the fields of a chunk sent for each story before its text


COMPLETION = Shape("cmpl", "text_completion", "text_completion", completion_logprobs,
                   message=lambda text: {"text": text}, delta=lambda text: {"text": text or ""})
CHAT = Shape("chatcmpl", "chat.completion", "chat.completion.chunk", chat_logprobs,
             message=lambda text: {"message": {"role": "assistant", "content": text}},
             delta=lambda text: {"delta": {} if text is None else {"content": text}},
             opening={"delta": {"role": "assistant", "content": ""}})  # OpenAI's chat streams open with the role


@dataclass
class ServerState:
    """What every route reads, kept on `app.state.server`: the models by name, the limits, the start time."""

    served: dict[str, Served]
    config: ServeConfig
    started: int = field(default_factory=lambda: int(time.time()))
    continuous: bool = True  # rows join a running batch; False: static batches (the load benchmark's comparison)

    def find(self, name: str) -> Served:
        if name not in self.served:
            raise APIError(404, f"model '{name}' is not served here (served: {', '.join(self.served)})", "model",
                           "model_not_found")
        return self.served[name]

    def card(self, s: Served) -> dict:
        return {"id": s.name, "object": "model", "created": self.started, "owned_by": "talelab",
                "context_length": s.model.config.context_length, "parameters": s.model.num_parameters(),
                "chat": bool(s.tokenizer.chat_template)}  # an instruct model: the playground asks it as a chat

    def checked_prompts(self, s: Served, request: Sampling, prompts: list[str | list[int]], prompt_param: str,
                        max_tokens: int) -> list[list[int]]:
        """The prompts' tokens, once the request is within every limit of the server and the model."""
        config, stories = self.config, len(prompts) * request.n
        if max_tokens > config.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {config.max_tokens}",
                           "max_tokens")
        if request.n > config.max_choices:
            raise APIError(400, f"n={request.n} is over this server's limit of {config.max_choices}", "n")
        ids = [self.prompt_ids(s, prompt, request.features, prompt_param, room=1 if max_tokens else 0)
               for prompt in prompts]
        if sum(other.batcher.pending for other in self.served.values()) + stories > config.max_concurrent:
            raise APIError(429, f"the server is writing {config.max_concurrent} stories already; retry shortly",
                           kind="rate_limit_error", code="too_many_requests")
        return ids

    def prompt_ids(self, s: Served, prompt: str | list[int], features: list[str], param: str, room: int) -> list[int]:
        """A text prompt's tokens after BOS (in the features' form), or token ids as they are; `room` tokens must fit
        after them in the model's context."""
        if isinstance(prompt, str):
            if len(prompt) > self.config.max_prompt_chars:
                raise APIError(400, f"the prompt has {len(prompt)} characters, over this server's limit of "
                               f"{self.config.max_prompt_chars}", param)
            ids = s.tokenizer.encode(story_prompt(features, beginning=prompt), bos=True)
        elif features:
            raise APIError(400, "features: they enter a text prompt, and this prompt is token ids", "features")
        elif max(prompt) >= (vocab := s.model.config.vocab_size):
            raise APIError(400, f"token id {max(prompt)} is outside model '{s.name}''s vocabulary of {vocab}", param)
        else:
            ids = prompt
        context = s.model.config.context_length
        if len(ids) > context - room:
            raise APIError(400, f"model '{s.name}' reads at most {context} tokens and the prompt has {len(ids)}"
                           f"{' (the story needs room for one more)' if room else ''}; shorten it", param,
                           "context_length_exceeded")
        return ids


def server_state(request: Request) -> ServerState:
    return request.app.state.server


@asynccontextmanager
async def run_batchers(app: FastAPI):
    """Each model's batching worker runs while the app does."""
    state: ServerState = app.state.server
    config = state.config
    rows, window = (config.max_batch, config.batch_window_ms / 1000) if config.batching else (1, 0.0)
    for s in state.served.values():
        s.batcher = Batcher(s.name, s.model, s.tokenizer, rows, window, continuous=state.continuous)
    yield
    for s in state.served.values():
        s.batcher.close()


async def api_error(request: Request, e: APIError):
    return error_response(e.status, e.message, e.param, e.code, e.kind)


async def invalid_request(request: Request, e: RequestValidationError):
    first = e.errors()[0]
    if first["type"] == "json_invalid":
        return error_response(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error')})",
                              code="invalid_json")
    param = ".".join(str(part) for part in first["loc"] if part != "body") or None
    message = "talelab does not implement this field; leave it out" if first["type"] == "extra_forbidden" else \
        first["msg"]
    return error_response(400, f"{param or 'body'}: {message}", param)


async def http_error(request: Request, e: HTTPException):
    return error_response(e.status_code, str(e.detail), kind="not_found_error" if e.status_code == 404 else
                          "invalid_request_error")


async def server_error(request: Request, e: Exception):
    return error_response(500, "the server failed on this request; its log has the details", kind="server_error")


async def refuse_large_bodies(request: Request, call_next):
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        return error_response(413, f"the request body is over {MAX_BODY_BYTES} bytes")
    return await call_next(request)


async def health(request: Request):
    return {"status": "ok", "models": {name: {**s.batcher.stats, "pending": s.batcher.pending}
                                       for name, s in server_state(request).served.items()}}


async def list_models(request: Request):
    state = server_state(request)
    return {"object": "list", "data": [state.card(s) for s in state.served.values()]}


async def get_model(request: Request, name: str):
    state = server_state(request)
    return state.card(state.find(name))


async def completions(request: Request, body: CompletionRequest):
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens=0 writes nothing: it scores the prompt, with echo=true and logprobs",
                       "max_tokens")
    return await answer(server_state(request), body, body.prompt, "prompt", body.max_tokens, body.logprobs or 0,
                        COMPLETION, echo=body.echo)


async def chat_completions(request: Request, body: ChatRequest):
    top = (body.top_logprobs or 0) if body.logprobs else 0
    state = server_state(request)
    return await answer(state, body, [chat_prompt(state.find(body.model), body.messages)], "messages",
                        body.max_completion_tokens or body.max_tokens, top, CHAT)


async def playground():
    return FileResponse(STATIC / "index.html")


async def answer(state: ServerState, request: Sampling, prompts: list[str | list[int]], prompt_param: str,
                 max_tokens: int | None, top: int, shape: Shape, echo: bool = False):
    """Write n stories per prompt: one response when they are done, or a stream as they are written."""
    s = state.find(request.model)
    if request.stream_options and not request.stream:
        raise APIError(400, "stream_options: only a streamed request (stream=true) takes them", "stream_options")
    if max_tokens is None:
        max_tokens = min(state.config.default_max_tokens, state.config.max_tokens)
    prompt_ids = state.checked_prompts(s, request, prompts, prompt_param, max_tokens)
    rows = [ids for ids in prompt_ids for _ in range(request.n)]  # choice i: prompt i // n, its (i % n)th story
    configs = [SamplingConfig(max_new_tokens=max_tokens, temperature=request.temperature, top_k=request.top_k,
                              top_p=request.top_p, repetition_penalty=request.repetition_penalty,
                              seed=-1 if request.seed is None else request.seed + i)
               for _ in prompt_ids for i in range(request.n)]
    jobs = s.batcher.submit(rows, configs, request.stop, top, score_prompt=echo and top > 0,
                            streamed=request.stream)
    echoed = [s.tokenizer.decode(ids) if echo else "" for ids in rows]
    prompt_tokens = sum(map(len, prompt_ids))

    def usage(stories: list[Story]) -> dict:
        completion_tokens = sum(len(story.tokens) for story in stories)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    head = {"id": f"{shape.id_prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": s.name}
    if request.stream:
        with_usage = request.stream_options is not None and request.stream_options.include_usage
        return StreamingResponse(stream(jobs, head, top, shape, echoed, usage if with_usage else None),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    stories = await finished_stories(jobs)
    choices = [{"index": index, **shape.message(echoed[index] + story.text),
                "logprobs": shape.logprobs(story) if top else None, "finish_reason": story.finish_reason}
               for index, story in enumerate(stories)]
    return {**head, "object": shape.object, "choices": choices, "usage": usage(stories)}


@contextmanager
def cancelled_after(jobs: list[Job]):
    """Ends the rows still decoding once their request is answered, failed or abandoned by its client."""
    try:
        yield
    finally:
        for job in jobs:
            job.cancelled = True


async def finished_stories(jobs: list[Job]) -> list[Story]:
    """The jobs' stories in index order, once every one is done."""
    stories: dict[int, Story] = {}
    with cancelled_after(jobs):
        async for index, kind, value in events(jobs):
            if kind == "error":
                raise APIError(500, value, kind="server_error")
            if kind == "done":
                stories[index] = value
    return [stories[index] for index in range(len(jobs))]


async def stream(jobs: list[Job], head: dict, top: int, shape: Shape, echoed: list[str],
                 usage: Callable[[list[Story]], dict] | None):
    """Server-sent events: each story's echoed prompt, a chunk per piece of text, each story's finish reason, the
    usage if asked (a chunk without choices, as OpenAI's `include_usage` sends it), then [DONE]."""
    head = {**head, "object": shape.chunk_object, **({"usage": None} if usage else {})}

    def chunk(index: int, fields: dict, finish: str | None = None, logprobs=None) -> str:
        return sse({**head, "choices": [{"index": index, **fields, "logprobs": logprobs, "finish_reason": finish}]})

    stories = []
    with cancelled_after(jobs):
        for job in jobs:
            if shape.opening:
                yield chunk(job.index, shape.opening)
            if echoed[job.index]:
                yield chunk(job.index, shape.delta(echoed[job.index]))
        async for index, kind, value in events(jobs):
            if kind == "text":
                yield chunk(index, shape.delta(value))
            elif kind == "done":
                stories.append(value)
                yield chunk(index, shape.delta(None), value.finish_reason, shape.logprobs(value) if top else None)
            else:
                yield sse({"error": {"message": value, "type": "server_error", "param": None, "code": None}})
        if usage:
            yield sse({**head, "choices": [], "usage": usage(stories)})
        yield "data: [DONE]\n\n"


def create_app(served: dict[str, Served], config: ServeConfig, continuous: bool = True) -> FastAPI:
    """The API and the playground over already loaded models; each model's batching worker runs while the app does
    (`continuous=False`: static batches, kept for the load benchmark's comparison)."""
    app = FastAPI(title="talelab", summary="OpenAI-compatible story models", lifespan=run_batchers)
    app.state.server = ServerState(served, config, continuous=continuous)
    for error, handler in [(APIError, api_error), (RequestValidationError, invalid_request),
                           (HTTPException, http_error), (Exception, server_error)]:
        app.add_exception_handler(error, handler)
    app.middleware("http")(refuse_large_bodies)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/models/{name}", get_model, methods=["GET"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_api_route("/", playground, methods=["GET"], include_in_schema=False)
    return app


def run_server(model_specs: list[str], config: ServeConfig, decode: DecodeConfig = DecodeConfig(),
               continuous: bool = True) -> None:
    """Load the models and serve until interrupted."""
    app = create_app(load_models(model_specs, decode), config, continuous)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
