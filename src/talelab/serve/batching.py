"""The scheduler: one worker thread per served model writes its requests' stories side by side (continuous batching).

A request's handler (on the asyncio event loop) submits its stories as jobs. The model's worker keeps one
`decoding_batch.DecodingBatch` of up to `max_batch` rows and loops: start the waiting jobs in free rows (their prompts
read in one forward pass, their keys and values placed in those rows' cache slots), run one decoding step for every
live row, send each row's new text to its handler's asyncio queue, retire the rows that ended, repeat; with no rows
and no jobs it waits. So a request joins the running batch at the next step instead of waiting for the longest story
of the batch before it, a short story leaves as soon as it ends, and streamed chunks of different requests
interleave. Each row keeps its own settings, seed and positions, and every step samples through the one sampler
`generate_batch` uses, so a seeded request tells the same story alone or joining a busy batch.

When idle, the worker waits `window_s` after the first job for others (up to `max_batch`), so that requests sent
together share their first forward pass. With `max_batch=1` requests are served one at a time. Only talelab's
Transformer lets rows join a running batch (its cache has a slot per row and position); the other families
(recurrent, compressor, Hugging Face) batch statically: the jobs waiting when the batch is empty start together and
the next ones wait until every row has ended. `Batcher(continuous=False)` batches statically for every family (the
load benchmark's comparison). A job that echoes its prompt with logprobs first has the prompt scored, in one forward
pass for the prompts that start together; a job with no token to write (`max_tokens: 0`) is then done.
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
from talelab.decoding_batch import DecodingBatch, Generated
from talelab.evaluate.likelihood import next_token_logits
from talelab.generate import evaluating
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
    streamed: bool = True  # the handler sends text as it is written; else it waits for the story (no "text" events)
    cancelled: bool = False  # set by the handler when its client went away: the row ends at its next token
    scored: Scored | None = None  # the prompt's scores, filled in by the worker when score_prompt asks for them


def deliver(items: list[tuple[asyncio.Queue, tuple[int, str, object]]]) -> None:
    """On the event loop: put the worker's events of one round on their requests' queues."""
    for events_queue, event in items:
        events_queue.put_nowait(event)


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


@dataclass
class Writing:
    """A job that holds a row of the decoding batch, and its story's text so far."""

    job: Job
    text: StoryText


class Batcher:
    """A model's worker thread and its inbox; `submit` from the event loop, `close` at shutdown.

    `continuous=False` keeps static batching for every family (the load benchmark's comparison); families whose rows
    cannot join a running batch (see the module docstring) batch statically whatever it says.
    """

    def __init__(self, name: str, model, tokenizer: Tokenizer, max_batch: int, window_s: float,
                 continuous: bool = True):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.window_s = max_batch, window_s
        self.batch = DecodingBatch(model, max_batch, static=not continuous)
        self.continuous = self.batch.joinable
        self.writing: dict[int, Writing] = {}  # by row slot
        self.outbox: list[tuple[Job, str, object]] = []  # the round's events, handed over together after it
        self.inbox: queue.Queue[Job | None] = queue.Queue()
        self.closing = False  # close() was called: finish the stories being written, then stop
        # read by /health and the load benchmark: stories started, groups of them that started together (one prefill
        # pass each), most rows live at once, forward passes (the hook counts those batching saves), decoding steps,
        # live rows summed over the steps, and their mean
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "forward_passes": 0, "steps": 0,
                      "row_steps": 0, "mean_live_rows": 0.0}
        self.pending = 0  # jobs submitted and not yet finished: the server's concurrency cap counts these
        self._lock = threading.Lock()
        self._hook = model.register_forward_hook(self._count_forward)
        self.thread = threading.Thread(target=self._run, name=f"talelab-serve-{name}", daemon=True)
        self.thread.start()

    def _count_forward(self, *_) -> None:
        self.stats["forward_passes"] += 1

    def submit(self, prompts: list[list[int]], configs: list[SamplingConfig], stop: list[str],
               top_alternatives: int, score_prompt: bool = False, streamed: bool = True) -> list[Job]:
        """Queue one job per (prompt, config) (a request's stories); their events arrive on one shared queue, the
        text as it is written only when `streamed`."""
        shared, loop = asyncio.Queue(), asyncio.get_running_loop()
        jobs = [Job(i, prompt_ids, config, stop, top_alternatives, shared, loop, score_prompt, streamed)
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
        with evaluating(self.model):
            while (arrivals := self._arrivals()) is not None:
                if arrivals:
                    self._admit(arrivals)
                if self.writing:
                    self._step()
                self._flush()

    def _arrivals(self) -> list[Job] | None:
        """The jobs to start now; None when it is time to stop. While stories are being written: those already
        waiting, up to the free rows (none when batching statically). When idle: the first to come and those that
        follow within the window, so that requests sent together share their first forward pass."""
        if self.writing:
            return self._take(self.batch.free_rows, deadline=None) if self.continuous else []
        if self.closing or (first := self.inbox.get()) is None:
            return None
        return [first, *self._take(self.max_batch - 1, deadline=time.monotonic() + self.window_s)]

    def _take(self, room: int, deadline: float | None) -> list[Job]:
        """Up to `room` jobs from the inbox, waiting for them until `deadline` (None: only those already there)."""
        jobs = []
        while len(jobs) < room and not self.closing:
            try:
                job = self.inbox.get(block=deadline is not None,
                                     timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self.closing = True
            else:
                jobs.append(job)
        return jobs

    def _admit(self, jobs: list[Job]) -> None:
        """Score the prompts that asked for it, finish the jobs with nothing to write, start the others in rows of
        the batch (their prompts read in one forward pass)."""
        live = [job for job in jobs if not job.cancelled]
        self._count_pending(len(live) - len(jobs))
        if not live:
            return
        self.stats["requests"] += len(live)
        self.stats["batches"] += 1
        scoring = [job for job in live if job.score_prompt]
        prompts = list(dict.fromkeys(tuple(job.prompt_ids) for job in scoring))  # a request's n stories share one
        try:
            top = max((job.top_alternatives for job in scoring), default=0)
            scored = dict(zip(prompts, score_prompts(self.model, self.tokenizer, list(map(list, prompts)), top)))
        except Exception as e:  # a fault must reach every waiting client as an error, not end the worker thread
            self._fail(live, "scoring the prompt", e)
            return
        for job in scoring:  # the top alternatives the job asked for, of those scored for the group
            whole = scored[tuple(job.prompt_ids)]
            job.scored = Scored(whole.pieces, whole.logprobs, [None if o is None else o[:job.top_alternatives]
                                                               for o in whole.alternatives])
        try:  # no eos for the batch: _on_token ends a row at the end-of-story token, which stays in the story
            slots = self.batch.admit([job.prompt_ids for job in live], [job.config for job in live],
                                     [None] * len(live), [job.top_alternatives for job in live])
        except Exception as e:
            self._fail(live, "generation", e)
            return
        for job, slot in zip(live, slots):
            if slot is None:  # max_tokens 0: the prompt's scores are the whole answer
                self._count_pending(-1)
                self._send(job, "done", Story("", "length", [], [], [], job.scored))
            else:
                self.writing[slot] = Writing(job, StoryText(self.tokenizer, job.prompt_ids, job.stop))
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(self.writing))

    def _step(self) -> None:
        """One token for every story being written; the finished ones are sent."""
        rows = len(self.writing)
        try:
            ended = self.batch.step(self._on_token)
        except Exception as e:  # the batch's state is unknown after a fault: its stories fail, a fresh one follows
            self._fail([writing.job for writing in self.writing.values()], "generation", e)
            self.writing.clear()
            self.batch = DecodingBatch(self.model, self.max_batch, static=not self.continuous)
            return
        self.stats["steps"] += 1
        self.stats["row_steps"] += rows
        self.stats["mean_live_rows"] = self.stats["row_steps"] / self.stats["steps"]
        for slot, result in ended:
            self._finish(self.writing.pop(slot), result)

    def _on_token(self, slot: int, token: int) -> bool:
        """Send a row's new text; whether the row ends here (its client went away, a stop string, end of story)."""
        writing = self.writing[slot]
        if writing.job.cancelled:
            return True
        if (piece := writing.text.push(token)) and writing.job.streamed:
            self._send(writing.job, "text", piece)
        return writing.text.stopped or token == self.tokenizer.eos_id

    def _send(self, job: Job, kind: str, value) -> None:
        """An event for a job's handler: (its index, "text", str), (.., "done", Story) or (.., "error", str)."""
        self.outbox.append((job, kind, value))

    def _flush(self) -> None:
        """Hand the round's events to their event loops, all of a loop's at once: one wake-up of a loop per step at
        most, not one per token (the loop's thread and this one share the interpreter lock)."""
        rounds: dict[asyncio.AbstractEventLoop, list] = {}
        for job, kind, value in self.outbox:
            rounds.setdefault(job.loop, []).append((job.events, (job.index, kind, value)))
        self.outbox = []
        for loop, items in rounds.items():
            try:
                loop.call_soon_threadsafe(deliver, items)
            except RuntimeError:  # the event loop has closed (server shutdown): nobody is listening any more
                pass

    def _fail(self, jobs: list[Job], doing: str, e: Exception) -> None:
        log.exception("%d stories failed %s", len(jobs), doing)
        self._count_pending(-len(jobs))
        for job in jobs:
            self._send(job, "error", f"{doing} failed: {e}")

    def _finish(self, writing: Writing, result: Generated) -> None:
        """Send a finished story: the rest of its text, then the story cut at its stop string."""
        job, text = writing.job, writing.text
        if (rest := text.finish()) and job.streamed:
            self._send(job, "text", rest)
        kept, offset = 0, 0  # the tokens whose text lies before a stop string's cut
        while kept < len(text.pieces) and (offset < len(text.text) or not text.stopped):
            offset += len(text.pieces[kept])
            kept += 1
        alternatives = []
        if job.top_alternatives:
            options = [[(i, logprob(p)) for i, p in o[:job.top_alternatives]] for o in result.alternatives[:kept]]
            alternatives = alternative_texts(self.tokenizer, job.prompt_ids, result.tokens[:kept], options)
        self._count_pending(-1)  # first: a client that has its answer finds the story no longer pending
        self._send(job, "done", Story(text.text, "stop" if text.stopped else result.finish_reason,
                                      result.tokens[:kept], text.pieces[:kept], alternatives, job.scored))
