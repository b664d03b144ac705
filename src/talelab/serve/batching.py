"""The scheduler: one worker thread per served model decodes the requests that arrive together as one batch.

A request's handler (on the asyncio event loop) submits its stories as jobs. The model's worker takes the first
waiting job, then keeps collecting for `window_s` or until `max_batch` rows, and hands them all to
`generate.generate_batch`, which shares every forward pass between them while each row keeps its own sampling
settings and seed. Text goes back to each handler through its asyncio queue, token by token, as it is decoded.

Batches are static: a request that arrives while a batch decodes waits for the next one, which then starts with every
request that queued meanwhile. With `max_batch=1` requests are served one at a time (the baseline the load benchmark
compares against). A job that echoes its prompt with logprobs first has the prompt scored, in one forward pass for
the batch's prompts; a job with no token to write (`max_tokens: 0`) is then done.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import torch

from talelab.config import SamplingConfig
from talelab.evaluate.likelihood import next_token_logits
from talelab.generate import evaluating, generate_batch
from talelab.tokenizer import Tokenizer

log = logging.getLogger("talelab.serve")


@dataclass
class Scored:
    """A prompt read back through the model: each token's text, log-probability given the tokens before it and most
    likely alternatives there as (id, text, logprob); the first token has neither (None): nothing precedes it."""

    pieces: list[str]
    logprobs: list[float | None]
    alternatives: list[list[tuple[int, str, float]] | None]


@dataclass
class Story:
    """A finished story: its text (cut at a stop string) and the tokens behind it, the end-of-story token included."""

    text: str
    finish_reason: str  # "stop": end of story or a stop string; "length": max_tokens or the context is full
    tokens: list[int]
    pieces: list[str]  # the text each token added (a token inside a multi-byte character, or the end, adds '')
    alternatives: list[list[tuple[int, str, float]]]  # per token, the most likely (id, text, logprob)
    prompt: Scored | None = None  # the prompt's own scores, when the request echoes it with logprobs


@dataclass
class Job:
    """One story to write, submitted from the event loop and filled in by the worker thread."""

    index: int  # which of its request's n stories this is
    prompt_ids: list[int]
    config: SamplingConfig
    stop: list[str]
    top_alternatives: int
    events: asyncio.Queue  # shared by a request's stories: (index, "text", str), then (index, "done", Story)
    loop: asyncio.AbstractEventLoop
    score_prompt: bool = False  # echo with logprobs: the prompt's tokens are scored before the story is written
    cancelled: bool = False  # set by the handler when its client went away: the row ends at its next token
    scored: Scored | None = None  # the prompt's scores, filled in by the worker when score_prompt asks for them

    def send(self, kind: str, value) -> None:
        """Hand an event to the handler's event loop (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, kind, value))
        except RuntimeError:  # the event loop has closed (server shutdown): nobody is listening any more
            pass


async def events(jobs: list[Job]) -> AsyncIterator[tuple[int, str, object]]:
    """A request's events in arrival order, until each of its stories is done or failed."""
    open_jobs = len(jobs)
    while open_jobs:
        index, kind, value = await jobs[0].events.get()
        if kind != "text":
            open_jobs -= 1
        yield index, kind, value


def held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string, so must not be sent yet."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1) if s.startswith(text[-k:])),
               default=0)


class StoryText:
    """A row's text as it grows: decoded incrementally, cut at the first stop string, never sending a stop's start."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: list[int], stop: list[str]):
        self.stream = tokenizer.stream()
        for i in prompt_ids:  # left context: a token's text can depend on what precedes it (first space of a story)
            self.stream.push(i)
        self.stop, self.text, self.sent, self.stopped = stop, "", 0, False
        self.pieces: list[str] = []

    def push(self, token: int) -> str:
        """Add a token; the text that may be sent now (maybe '')."""
        piece = self.stream.push(token)
        self.pieces.append(piece)
        return self._advance(piece, final=False)

    def finish(self) -> str:
        """The rest of the text once the row has ended (a held-back character, a stop string's near miss)."""
        if self.stopped:  # the text was cut: what the stream still holds lies beyond the cut
            return ""
        rest = self.stream.flush()
        if self.pieces:
            self.pieces[-1] += rest
        return self._advance(rest, final=True)

    def _advance(self, piece: str, final: bool) -> str:
        self.text += piece
        # a stop string cannot begin before `sent`: its start would have been held back
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped, final = self.text[:min(hits)], True, True
        end = len(self.text) if final else len(self.text) - held_back(self.text, self.stop)
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out


def logprob(p: float) -> float:
    return math.log(max(p, 1e-300))  # a probability that underflowed to 0 would give -inf, which JSON cannot carry


def alternative_texts(tokenizer: Tokenizer, prompt_ids: list[int], tokens: list[int],
                      alternatives: list[list[tuple[int, float]]]) -> list[list[tuple[int, str, float]]]:
    """Each alternative's text where it would have stood; specials (end of story) show as their token string."""
    sequence, out = list(prompt_ids), []
    for token, options in zip(tokens, alternatives):
        left = sequence[-4:]  # a few tokens of left context fix spaces and multi-byte characters; more change nothing
        base = tokenizer.decode(left)
        out.append([(i, tokenizer.decode(left + [i])[len(base):] or tokenizer.backend.id_to_token(i), p)
                     for i, p in options])
        sequence.append(token)
    return out


@torch.no_grad()
def score_prompts(model, tokenizer: Tokenizer, prompts: list[list[int]], top: int) -> list[Scored]:
    """Each prompt read back in one forward pass, as `talelab eval loss` reads a document (likelihood.score_documents):
    every token's log-probability given those before it, and the `top` most likely tokens at its place."""
    if max((len(ids) for ids in prompts), default=1) > 1:  # else no prompt has a token to predict
        with evaluating(model):
            logits = next_token_logits(model, prompts, next(model.parameters()).device)
    scored = []
    for row, ids in enumerate(prompts):
        stream = tokenizer.stream()
        pieces = [stream.push(i) for i in ids]
        pieces[-1] += stream.flush()
        if len(ids) == 1:
            scored.append(Scored(pieces, [None], [None]))
            continue
        logp = logits[row, :len(ids) - 1].float().log_softmax(dim=-1)  # (T-1, vocab): predicts ids[1:]
        # the chosen and the top values come from one tensor: a greedy token's logprob equals the top one exactly
        chosen = logp.gather(1, torch.tensor(ids[1:], device=logp.device)[:, None])[:, 0].tolist()
        best = logp.topk(top)
        options = [list(zip(i, v)) for i, v in zip(best.indices.tolist(), best.values.tolist())]
        scored.append(Scored(pieces, [None, *chosen], [None, *alternative_texts(tokenizer, ids[:1], ids[1:], options)]))
    return scored


class Batcher:
    """A model's worker thread and its inbox; `submit` from the event loop, `close` at shutdown."""

    def __init__(self, name: str, model, tokenizer: Tokenizer, max_batch: int, window_s: float):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.window_s = max_batch, window_s
        self.inbox: queue.Queue[Job | None] = queue.Queue()
        # read by /health and the load benchmark; the forward hook counts the passes that batching saves
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "forward_passes": 0}
        self.pending = 0  # jobs submitted and not yet finished: the server's concurrency cap counts these
        self._lock = threading.Lock()
        self._hook = model.register_forward_hook(self._count_forward)
        self.thread = threading.Thread(target=self._run, name=f"talelab-serve-{name}", daemon=True)
        self.thread.start()

    def _count_forward(self, *_) -> None:
        self.stats["forward_passes"] += 1

    def submit(self, prompts: list[list[int]], configs: list[SamplingConfig], stop: list[str],
               top_alternatives: int, score_prompt: bool = False) -> list[Job]:
        """Queue one job per (prompt, config) (a request's stories); their events arrive on one shared queue."""
        shared, loop = asyncio.Queue(), asyncio.get_running_loop()
        jobs = [Job(i, prompt_ids, config, stop, top_alternatives, shared, loop, score_prompt)
                for i, (prompt_ids, config) in enumerate(zip(prompts, configs, strict=True))]
        self._count_pending(len(jobs))
        for job in jobs:
            self.inbox.put(job)
        return jobs

    def _count_pending(self, change: int) -> None:
        with self._lock:  # the event loop adds, the worker thread subtracts
            self.pending += change

    def close(self) -> None:
        self.inbox.put(None)
        self.thread.join(timeout=30)
        self._hook.remove()

    def _run(self) -> None:
        while (first := self.inbox.get()) is not None:
            batch = [first]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    job = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self.inbox.put(None)  # decode what was collected, then stop
                    break
                batch.append(job)
            live = [job for job in batch if not job.cancelled]
            self._count_pending(len(live) - len(batch))
            if live:
                self._serve(live)

    def _serve(self, batch: list[Job]) -> None:
        """Score the prompts that asked for it, finish the jobs with nothing to write, decode the others."""
        self.stats["requests"] += len(batch)
        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        scoring = [job for job in batch if job.score_prompt]
        prompts = list(dict.fromkeys(tuple(job.prompt_ids) for job in scoring))  # a request's n stories share one
        try:
            top = max((job.top_alternatives for job in scoring), default=0)
            scored = dict(zip(prompts, score_prompts(self.model, self.tokenizer, list(map(list, prompts)), top)))
        except Exception as e:  # a fault must reach every waiting client as an error, not end the worker thread
            self._fail(batch, "scoring the prompt", e)
            return
        for job in batch:
            if job.score_prompt:  # the top alternatives the job asked for, of those scored for the batch
                whole = scored[tuple(job.prompt_ids)]
                job.scored = Scored(whole.pieces, whole.logprobs, [None if o is None else o[:job.top_alternatives]
                                                                   for o in whole.alternatives])
            if job.config.max_new_tokens == 0:
                job.send("done", Story("", "length", [], [], [], job.scored))
                self._count_pending(-1)
        writing = [job for job in batch if job.config.max_new_tokens > 0]
        if writing:
            self._decode(writing)

    def _fail(self, batch: list[Job], doing: str, e: Exception) -> None:
        log.exception("batch of %d failed %s", len(batch), doing)
        for job in batch:
            job.send("error", f"{doing} failed: {e}")
        self._count_pending(-len(batch))

    def _decode(self, batch: list[Job]) -> None:
        texts = [StoryText(self.tokenizer, job.prompt_ids, job.stop) for job in batch]
        eos = self.tokenizer.eos_id

        def on_token(row: int, token: int) -> bool:
            if batch[row].cancelled:
                return True
            if piece := texts[row].push(token):
                batch[row].send("text", piece)
            return texts[row].stopped or token == eos

        try:  # no eos for generate_batch: on_token ends the row at the end-of-story token, which stays in the story
            results = generate_batch(self.model, [job.prompt_ids for job in batch], [job.config for job in batch],
                                     [None] * len(batch), on_token,
                                     top_alternatives=max(job.top_alternatives for job in batch))
        except Exception as e:
            self._fail(batch, "generation", e)
            return
        for job, text, result in zip(batch, texts, results):
            if rest := text.finish():
                job.send("text", rest)
            kept, offset = 0, 0  # the tokens whose text lies before a stop string's cut
            while kept < len(text.pieces) and (offset < len(text.text) or not text.stopped):
                offset += len(text.pieces[kept])
                kept += 1
            alternatives = []
            if job.top_alternatives:
                options = [[(i, logprob(p)) for i, p in o[:job.top_alternatives]] for o in result.alternatives[:kept]]
                alternatives = alternative_texts(self.tokenizer, job.prompt_ids, result.tokens[:kept], options)
            job.send("done", Story(text.text, "stop" if text.stopped else result.finish_reason, result.tokens[:kept],
                                   text.pieces[:kept], alternatives, job.scored))
            self._count_pending(-1)
