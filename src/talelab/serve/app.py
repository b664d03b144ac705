"""An OpenAI-compatible API over talelab models, and the story playground page.

Routes: `GET /v1/models` (and `/v1/models/{name}`), `POST /v1/completions`, `POST /v1/chat/completions` (both stream
server-sent events with `"stream": true`), `GET /health` (with batching counters), `GET /` (the playground).

A story model has no dialogue format: a chat request's story beginning is its last user message, and the other
messages are ignored; the answer is the continuation. Beyond OpenAI's fields a request may set `top_k`,
`repetition_penalty` and `features` (of the six TinyStories features), which enter the prompt in the TinyStories
Instruct form `Features: Dialogue, Twist\\nStory: <beginning>`; only models tuned on that form have learned it.
`logprobs` report the model's top alternatives after the repetition penalty, before temperature; a sampled token
outside them has no logprob (null). When streaming, they arrive with each story's last chunk.

Errors have OpenAI's shape `{"error": {"message", "type", "param", "code"}}`: 400 for a body that is not JSON or
breaks the schema or a limit (a prompt longer than the context included), 404 for a model that is not served,
413 for a body over 1 MiB, 429 when `max_concurrent` stories are being written. Models are named on the command line
(NAME=PATH: a talelab model or run directory, a Hugging Face causal LM directory or a PEFT adapter directory) and
loaded from safetensors; a request picks one by name and can never name a path.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Annotated, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.exceptions import HTTPException

from talelab.config import DecodeConfig, SamplingConfig, ServeConfig
from talelab.data.tags import FEATURES, story_prompt
from talelab.errors import ConfigError
from talelab.generate import load_decoder
from talelab.serve.batching import Batcher, Story, events
from talelab.tokenizer import Tokenizer

Feature = Literal[FEATURES]
MAX_BODY_BYTES = 1 << 20  # far above any prompt the character cap lets through
STATIC = Path(__file__).parent / "static"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# OpenAI takes one stop string or a list of up to 4
StopStrings = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=4),
                        BeforeValidator(lambda value: [value] if isinstance(value, str) else value)]


class Sampling(BaseModel):
    """The fields completions and chat share. Unknown OpenAI fields (user, stream_options...) are ignored."""

    model_config = ConfigDict(extra="ignore")
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
    features: Annotated[list[Feature], Field(max_length=len(FEATURES))] = []


class CompletionRequest(Sampling):
    prompt: str
    logprobs: int | None = Field(None, ge=0, le=5)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=5)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


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


def story_beginning(messages: list[Message]) -> str:
    """The last user message's text: what a story model continues."""
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise APIError(400, "messages: a story model continues the last user message, and there is none",
                       "messages")
    content = users[-1].content
    return content if isinstance(content, str) else "".join(part.text for part in content or [])


def logprob(p: float) -> float:
    return math.log(max(p, 1e-300))  # a probability that underflowed to 0 would give -inf, which JSON cannot carry


def chosen_logprob(token: int, options: list[tuple[int, str, float]]) -> float | None:
    return next((logprob(p) for i, _, p in options if i == token), None)


def completion_logprobs(story: Story) -> dict:
    """OpenAI's legacy completions form: parallel lists of token texts, logprobs, alternatives and offsets."""
    return {"tokens": story.pieces,
            "token_logprobs": [chosen_logprob(t, o) for t, o in zip(story.tokens, story.alternatives)],
            "top_logprobs": [{text: logprob(p) for _, text, p in options} for options in story.alternatives],
            "text_offset": list(accumulate((len(p) for p in story.pieces), initial=0))[:-1]}


def chat_logprobs(story: Story) -> dict:
    def entry(text: str, value: float | None) -> dict:
        return {"token": text, "logprob": value, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**entry(piece, chosen_logprob(token, options)),
                         "top_logprobs": [entry(text, logprob(p)) for _, text, p in options]}
                        for token, piece, options in zip(story.tokens, story.pieces, story.alternatives)]}


def sse(payload) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def create_app(served: dict[str, Served], config: ServeConfig) -> FastAPI:
    """The API and the playground over already loaded models; each model's batching worker runs while the app does."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rows, window = (config.max_batch, config.batch_window_ms / 1000) if config.batching else (1, 0.0)
        for s in served.values():
            s.batcher = Batcher(s.name, s.model, s.tokenizer, rows, window)
        yield
        for s in served.values():
            s.batcher.close()

    app = FastAPI(title="talelab", summary="OpenAI-compatible story models", lifespan=lifespan)
    started = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.param, e.code, e.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        if first["type"] == "json_invalid":
            return error_response(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error')})",
                                  code="invalid_json")
        param = ".".join(str(part) for part in first["loc"] if part != "body") or None
        return error_response(400, f"{param or 'body'}: {first['msg']}", param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return error_response(e.status_code, str(e.detail), kind="not_found_error" if e.status_code == 404 else
                              "invalid_request_error")

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return error_response(500, "the server failed on this request; its log has the details", kind="server_error")

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            return error_response(413, f"the request body is over {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    def find(name: str) -> Served:
        if name not in served:
            raise APIError(404, f"model '{name}' is not served here (served: {', '.join(served)})", "model",
                           "model_not_found")
        return served[name]

    def card(s: Served) -> dict:
        return {"id": s.name, "object": "model", "created": started, "owned_by": "talelab",
                "context_length": s.model.config.context_length, "parameters": s.model.num_parameters()}

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": {name: {**s.batcher.stats, "pending": s.batcher.pending}
                                           for name, s in served.items()}}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [card(s) for s in served.values()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        return card(find(name))

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        return await answer(request, request.prompt, "prompt", request.max_tokens, request.logprobs or 0, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        top = (request.top_logprobs or 0) if request.logprobs else 0
        return await answer(request, story_beginning(request.messages), "messages",
                            request.max_completion_tokens or request.max_tokens, top, chat=True)

    async def answer(request: Sampling, beginning: str, prompt_param: str, max_tokens: int | None, top: int,
                     chat: bool):
        s = find(request.model)
        max_tokens = max_tokens or min(config.default_max_tokens, config.max_tokens)
        if max_tokens > config.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {config.max_tokens}",
                           "max_tokens")
        if request.n > config.max_choices:
            raise APIError(400, f"n={request.n} is over this server's limit of {config.max_choices}", "n")
        if len(beginning) > config.max_prompt_chars:
            raise APIError(400, f"the prompt has {len(beginning)} characters, over this server's limit of "
                           f"{config.max_prompt_chars}", prompt_param)
        prompt_ids = s.tokenizer.encode(story_prompt(request.features, beginning=beginning), bos=True)
        context = s.model.config.context_length
        if len(prompt_ids) >= context:  # the story needs room for at least one token
            raise APIError(400, f"model '{s.name}' reads at most {context} tokens and the prompt has "
                           f"{len(prompt_ids)}; shorten it", prompt_param, "context_length_exceeded")
        if sum(other.batcher.pending for other in served.values()) + request.n > config.max_concurrent:
            raise APIError(429, f"the server is writing {config.max_concurrent} stories already; retry shortly",
                           kind="rate_limit_error", code="too_many_requests")
        configs = [SamplingConfig(max_new_tokens=max_tokens, temperature=request.temperature, top_k=request.top_k,
                                  top_p=request.top_p, repetition_penalty=request.repetition_penalty,
                                  seed=-1 if request.seed is None else request.seed + i) for i in range(request.n)]
        jobs = s.batcher.submit(prompt_ids, configs, request.stop, top)
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": s.name}
        if request.stream:
            return StreamingResponse(stream(jobs, head, top, chat), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        stories: dict[int, Story] = {}
        try:
            async for index, kind, value in events(jobs):
                if kind == "error":
                    raise APIError(500, value, kind="server_error")
                if kind == "done":
                    stories[index] = value
        finally:
            for job in jobs:  # ends rows still decoding when this request was abandoned
                job.cancelled = True
        choices = []
        for index in range(request.n):
            story = stories[index]
            if chat:
                choice = {"message": {"role": "assistant", "content": story.text},
                          "logprobs": chat_logprobs(story) if top else None}
            else:
                choice = {"text": story.text, "logprobs": completion_logprobs(story) if top else None}
            choices.append({"index": index, **choice, "finish_reason": story.finish_reason})
        completion_tokens = sum(len(story.tokens) for story in stories.values())
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": completion_tokens,
                          "total_tokens": len(prompt_ids) + completion_tokens}}

    async def stream(jobs, head: dict, top: int, chat: bool):
        """Server-sent events: a chunk per piece of text, each story's finish reason, then [DONE]."""
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(index: int, text: str | None, finish: str | None = None, logprobs=None) -> str:
            if chat:
                delta = {} if text is None else {"content": text}
                choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
            return sse({**head, "choices": [choice]})

        try:
            if chat:  # OpenAI's streams open each message with its role
                for job in jobs:
                    yield sse({**head, "choices": [{"index": job.index, "delta": {"role": "assistant", "content": ""},
                                                    "logprobs": None, "finish_reason": None}]})
            async for index, kind, value in events(jobs):
                if kind == "text":
                    yield chunk(index, value)
                elif kind == "done":
                    logprobs = (chat_logprobs(value) if chat else completion_logprobs(value)) if top else None
                    yield chunk(index, None, value.finish_reason, logprobs)
                else:
                    yield sse({"error": {"message": value, "type": "server_error", "param": None, "code": None}})
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:  # the client went away: its rows end at their next token
                job.cancelled = True

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html")

    return app


def run_server(model_specs: list[str], config: ServeConfig, decode: DecodeConfig = DecodeConfig()) -> None:
    """Load the models and serve until interrupted."""
    import uvicorn

    app = create_app(load_models(model_specs, decode), config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info")
