"""Many stories decoded as one batch whose rows join and leave at any step: `DecodingBatch` (what `talelab serve`
runs) and `generate_batch` (a loop over it, for eval, prefs and the benchmarks).

Every row samples through talelab.generate.pick with its own seeded generator, so a seed and settings give the same
story alone (talelab.generate.generate), in a static batch, or joining a busy one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from talelab.config import SamplingConfig
from talelab.errors import MismatchError
from talelab.generate import evaluating, on_device, penalize_repeats, pick, start
from talelab.models.transformer import KVCache


@dataclass
class Generated:
    """One row of `generate_batch`: new tokens, why it ended, and the top alternatives behind each token."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop": eos or the caller said so; "length": max_new_tokens or the context
    alternatives: list[list[tuple[int, float]]] = field(default_factory=list)


@dataclass
class Row:
    """A story being written in a slot of a DecodingBatch: its settings, its seeded generator, what it has so far."""

    config: SamplingConfig
    generator: torch.Generator
    limit: int  # most tokens it may write: max_new_tokens, or fewer where the context ends
    eos: int | None  # the token that ends it, left out of the story (None: only the limit or the caller end it)
    top_alternatives: int
    result: Generated = field(default_factory=Generated)


class SlotCache:
    """The model side of a DecodingBatch for talelab's Transformer: each row's keys and values sit at its own cache
    slots (slot = position), so a row joins at any step and leaves without disturbing the others."""

    joinable = True

    def __init__(self, model, capacity: int):
        self.model, self.capacity = model, capacity
        self.cache: KVCache | None = None
        self.lengths = [0] * capacity  # tokens in each row's slots, where its next one goes; 0: a free row

    def prefill(self, slots: list[int], prompts: list[list[int]], limits: list[int]) -> torch.Tensor:
        """Read the new rows' prompts, right-padded, in one forward pass of their own and place their keys and values
        in the rows `slots`: the rows' next-token logits (rows, vocab) in fp32."""
        param = next(self.model.parameters())
        longest = max(map(len, prompts))
        idx = torch.tensor([p + [0] * (longest - len(p)) for p in prompts], device=param.device)
        fresh = self.model.new_cache(len(prompts), param.device, param.dtype, length=longest)
        # causal attention keeps each prompt from the padding after it, and the padding's keys land beyond the
        # row's length, where its queries never look: its own tokens overwrite them one by one
        logits, _ = self.model(idx, cache=fresh, start=0)
        self.reserve(max(len(p) + limit for p, limit in zip(prompts, limits)))
        self.cache.place(torch.tensor(slots, device=param.device), fresh)
        for slot, prompt in zip(slots, prompts):
            self.lengths[slot] = len(prompt)
        last = torch.tensor([len(p) - 1 for p in prompts], device=param.device)
        return logits[torch.arange(len(prompts), device=param.device), last].float()

    def reserve(self, length: int) -> None:
        """Room for `length` positions in every row: a longer cache with the old one copied in, when it falls short."""
        have = 0 if self.cache is None else self.cache.keys[0].size(2)
        if length <= have:
            return
        param = next(self.model.parameters())
        # doubling: a serving batch grows a few times, not at every longer request
        length = min(max(length, 2 * have), self.model.config.context_length)
        grown = self.model.new_cache(self.capacity, param.device, param.dtype, length=length)
        if self.cache is not None:
            grown.place(torch.arange(self.capacity, device=param.device), self.cache)
        self.cache = grown

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed every row up to the last one in use its token (capacity,) at its own slot: their next-token logits
        (rows, vocab) in fp32. A free row below feeds its token to slot 0, which the next row placed there replaces."""
        used = max(r for r, n in enumerate(self.lengths) if n) + 1
        lengths = self.lengths[:used]
        slots = on_device(lengths, tokens.device)
        sees = torch.arange(max(lengths) + 1, device=tokens.device) <= slots[:, None]  # (rows, longest row + 1)
        logits, _ = self.model(tokens[:used, None], cache=self.cache, start=slots, key_mask=sees)
        self.lengths[:used] = [n + 1 if n else 0 for n in lengths]
        return logits[:, -1].float()

    def release(self, slot: int) -> None:
        self.lengths[slot] = 0


class PaddedRows:
    """The model side of a DecodingBatch for any family (recurrent, compressor, Hugging Face): prompts left-padded
    to one shared cache slot, each row with its own positions and key mask. Rows join only an empty batch (static
    batching), and a finished row rides along, ignored, until the last one ends."""

    joinable = False

    def __init__(self, model, capacity: int):
        self.model = model
        self.live = 0

    def prefill(self, slots: list[int], prompts: list[list[int]], limits: list[int]) -> torch.Tensor:
        """Read the prompts of an empty batch (slots 0, 1...) in one left-padded forward pass: their next-token
        logits (rows, vocab) in fp32."""
        assert self.live == 0 and slots == list(range(len(prompts))), "padded rows join an empty batch only"
        param = next(self.model.parameters())
        device, rows, longest = param.device, len(prompts), max(map(len, prompts))
        pads = [longest - len(p) for p in prompts]
        self.cache = self.model.new_cache(rows, device, param.dtype, length=longest + max(limits))
        self.key_mask = torch.zeros(rows, longest + max(limits), dtype=torch.bool, device=device)
        for r, pad in enumerate(pads):
            self.key_mask[r, pad:longest] = True
        idx = torch.tensor([[0] * pad + p for p, pad in zip(prompts, pads)], device=device)
        positions = (torch.arange(longest, device=device) - torch.tensor(pads, device=device)[:, None]).clamp(min=0)
        logits, _ = self.model(idx, cache=self.cache, positions=positions, key_mask=self.key_mask[:, :longest])
        self.start, self.live = longest, rows
        self.lengths = torch.tensor([len(p) for p in prompts], device=device)  # each row's next position
        return logits[:, -1].float()

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed every row its token (capacity,) at the shared slot: their next-token logits (rows, vocab) in fp32."""
        rows = self.lengths.numel()
        self.key_mask[:, self.start] = True
        # finished rows ride along; clamping keeps their (ignored) positions in range
        positions = self.lengths.clamp(max=self.model.config.context_length - 1)[:, None]
        logits, _ = self.model(tokens[:rows, None], cache=self.cache, start=self.start, positions=positions,
                               key_mask=self.key_mask[:, :self.start + 1])
        self.start, self.lengths = self.start + 1, self.lengths + 1
        return logits[:, -1].float()

    def release(self, slot: int) -> None:
        self.live -= 1
        if self.live == 0:  # the batch is over: the next one starts afresh
            self.cache = self.key_mask = None


class DecodingBatch:
    """Stories written side by side, one per row slot, joining at any step (talelab's Transformer; other families
    only when the batch is empty) and leaving when they end.

    Every step chooses each live row's token with one sampler: the repetition penalty, `pick` under the row's own
    settings, and one uniform per row per step from the row's own seeded generator. So a seed and settings give the
    same story alone or in any batch, whenever it joined; `generate_batch` and `talelab serve` both decode here.
    """

    def __init__(self, model, capacity: int, static: bool = False):
        """`static`: left-padded rows that join only an empty batch, for talelab's Transformer too (the static
        batching that `talelab serve` had, kept for the load benchmark's comparison)."""
        self.model, self.capacity = model, capacity
        layout = SlotCache if not static and model.config.family == "transformer" else PaddedRows
        self.layout = layout(model, capacity)
        self.rows: list[Row | None] = [None] * capacity
        self.device = next(model.parameters()).device
        self.fed = torch.zeros(capacity, dtype=torch.long, device=self.device)  # each row's latest token
        self.logits = self.present = None  # (capacity, vocab): next-token logits in fp32, tokens present so far

    @property
    def joinable(self) -> bool:
        """Whether rows may join while others are being written (the layout's slot per row and position)."""
        return self.layout.joinable

    @property
    def live_rows(self) -> int:
        return sum(row is not None for row in self.rows)

    @property
    def free_rows(self) -> int:
        """How many rows may join now."""
        if not self.joinable and self.live_rows:
            return 0
        return self.capacity - self.live_rows

    @torch.no_grad()
    def admit(self, prompts: list[list[int]], configs: list[SamplingConfig], eos: list[int | None],
              top_alternatives: list[int]) -> list[int | None]:
        """Start a row for each prompt in the lowest free slots, the prompts read in one forward pass: each one's
        slot, None where there is nothing to write (max_new_tokens 0). A prompt the model cannot read raises
        MismatchError before any row starts."""
        starts = [start(self.model, prompt, config) for prompt, config in zip(prompts, configs)]
        writing = [i for i, (limit, _) in enumerate(starts) if limit > 0]
        if len(writing) > self.free_rows:
            raise MismatchError(f"{len(writing)} rows cannot join a batch with {self.free_rows} free")
        slots = [slot for slot, row in enumerate(self.rows) if row is None][:len(writing)]
        if writing:
            logits = self.layout.prefill(slots, [prompts[i] for i in writing], [starts[i][0] for i in writing])
            if self.logits is None:
                self.logits = torch.zeros(self.capacity, logits.size(-1), device=self.device)
                self.present = torch.zeros(self.capacity, logits.size(-1), dtype=torch.bool, device=self.device)
            self.logits[slots] = logits
            for slot, i in zip(slots, writing):
                self.present[slot] = False
                self.present[slot, prompts[i]] = True
                limit, generator = starts[i]
                self.rows[slot] = Row(configs[i], generator, limit, eos[i], top_alternatives[i])
        placed: list[int | None] = [None] * len(prompts)
        for slot, i in zip(slots, writing):
            placed[i] = slot
        return placed

    @torch.no_grad()
    def step(self, on_token: Callable[[int, int], bool | None] | None = None) -> list[tuple[int, Generated]]:
        """Choose every live row's next token, hand it to `on_token(slot, token)` (which may return True to end the
        row, e.g. at a stop string), retire the rows that ended and feed the others' tokens to the model: the slots
        and results of the rows that ended."""
        live = [slot for slot, row in enumerate(self.rows) if row is not None]
        rows = [self.rows[slot] for slot in live]
        index = on_device(live, self.device)
        logits = self.logits[index]
        if any(row.config.repetition_penalty != 1.0 for row in rows):  # a penalty of 1 changes no logit
            penalties = on_device([[row.config.repetition_penalty] for row in rows], self.device)
            logits = penalize_repeats(logits, self.present[index], penalties)
        # one uniform per row from that row's own generator: a request's seed fixes its story in any batch
        uniforms = torch.stack([torch.rand(1, generator=row.generator) for row in rows])
        token = pick(logits, [row.config for row in rows], uniforms)
        top = max(row.top_alternatives for row in rows)
        best = logits.softmax(dim=-1).topk(top) if top else None
        chosen = token.tolist()  # the step's one wait for the device, not one per row
        options = [[]] * len(rows)
        if best is not None:
            options = [list(zip(ids, probs)) for ids, probs in zip(best.indices.tolist(), best.values.tolist())]
        ended = [(slot, row.result) for slot, row, t, o in zip(live, rows, chosen, options)
                 if self._record(slot, row, t, o, on_token)]
        for slot, _ in ended:
            self.rows[slot] = None
            self.layout.release(slot)
        if self.live_rows:
            self.present[index, token] = True
            self.fed[index] = token
            out = self.layout.advance(self.fed)
            self.logits[:out.size(0)] = out
        return ended

    @staticmethod
    def _record(slot: int, row: Row, token: int, options: list[tuple[int, float]],
                on_token: Callable[[int, int], bool | None] | None) -> bool:
        """Add a chosen token to its row's story; whether the row has ended."""
        if token == row.eos and row.config.stop_at_eos:
            row.result.finish_reason = "stop"
            return True
        row.result.tokens.append(token)
        if row.top_alternatives:
            row.result.alternatives.append(options[:row.top_alternatives])
        if on_token is not None and on_token(slot, token):
            row.result.finish_reason = "stop"
            return True
        return len(row.result.tokens) >= row.limit


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], configs: list[SamplingConfig], eos_ids: int | None | list,
                   on_token: Callable[[int, int], bool | None] | None = None,
                   top_alternatives: int = 0) -> list[Generated]:
    """Continue prompts of different lengths together, each under its own sampling settings.

    One DecodingBatch with a row per prompt shares every forward pass; each row keeps its own positions, so its
    tokens match a run on its own (exactly for greedy). `on_token(row, token)` streams each new token and may
    return True to end that row (e.g. a stop string). Beam search is not batched: use `generate`.
    """
    eos = eos_ids if isinstance(eos_ids, list) else [eos_ids] * len(prompts)
    batch = DecodingBatch(model, len(prompts))
    results = [Generated() for _ in prompts]  # a row with nothing to write stays empty
    with evaluating(model):
        slots = batch.admit(prompts, configs, eos, [top_alternatives] * len(prompts))
        row_of = {slot: row for row, slot in enumerate(slots) if slot is not None}

        def streamed(slot: int, token: int) -> bool | None:
            return on_token(row_of[slot], token)

        while batch.live_rows:
            for slot, result in batch.step(streamed if on_token is not None else None):
                results[row_of[slot]] = result
    return results
