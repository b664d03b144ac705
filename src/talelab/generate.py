"""Stories from a model: greedy, sampled (repetition penalty, temperature, top-k, top-p) or beam search.

Every path runs the prompt once into a KV cache and then feeds one token per step. The sampling pipeline follows the
order of Hugging Face's logits processors: repetition penalty, temperature, top-k, top-p, softmax, draw.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from talelab.config import DecodeConfig, SamplingConfig
from talelab.devices import decoding_dtype, pick_device
from talelab.errors import MismatchError
from talelab.models.quantize import quantize_int8
from talelab.models.storage import load_model


def start(model, prompt_ids: list[int], config: SamplingConfig) -> tuple[int, torch.Generator]:
    """Check the request; return how many tokens may be generated and the seeded random generator."""
    context, vocab = model.config.context_length, model.config.vocab_size
    if not 0 < len(prompt_ids) <= context:
        raise MismatchError(f"prompt of {len(prompt_ids)} tokens does not fit the model's context_length {context} "
                            f"(it needs 1 to {context} tokens)")
    if not all(0 <= i < vocab for i in prompt_ids):
        raise MismatchError(f"prompt holds token ids outside the model's vocabulary of {vocab}: wrong tokenizer?")
    # the whole sequence, prompt and story, must stay within the context so that the model can read it back
    steps = min(config.max_new_tokens, context - len(prompt_ids))
    # On the CPU whatever the model's device: a draw there costs no kernel launch, the same seed gives the same
    # stories on every device, and a fresh seed from the OS leaves torch's global generator alone, so callers' own
    # randomness is undisturbed
    generator = torch.Generator()
    generator.manual_seed(config.seed if config.seed >= 0 else int.from_bytes(os.urandom(8), "little") >> 1)
    return steps, generator


@contextmanager
def evaluating(model):
    """Eval mode (no dropout) for the duration, then the caller's mode again."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def prefill(model, prompt_ids: list[int], rows: int):
    """Run the prompt once and copy its cache to `rows` streams: next-token logits (rows, vocab) in fp32, cache."""
    param = next(model.parameters())
    cache = model.new_cache(1, param.device, param.dtype)
    logits, _ = model(torch.tensor([prompt_ids], device=param.device), cache=cache, start=0)
    if rows > 1:  # identical prompts: one forward pass, then copies of its keys and values
        cache.reorder(torch.zeros(rows, dtype=torch.long, device=param.device))
    return logits[:, -1].float().expand(rows, -1), cache


def seen_tokens(prompt_ids: list[int], rows: int, config: SamplingConfig, vocab: int, device) -> torch.Tensor | None:
    """(rows, vocab) mask of tokens already present, for the repetition penalty; None when there is no penalty."""
    if config.repetition_penalty == 1.0:
        return None
    present = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
    present[:, prompt_ids] = True
    return present


def penalize_repeats(logits: torch.Tensor, present: torch.Tensor | None, penalty: float) -> torch.Tensor:
    """CTRL's penalty: make every present token less likely, whatever the sign of its logit."""
    if present is None:
        return logits
    return torch.where(present, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def keep_top_k(logits: torch.Tensor, k: int | Sequence[int]) -> torch.Tensor:
    """Keep each row's k most likely tokens and any tied with the k-th (k: one for every row, or one per row;
    0 or the vocabulary size or more: all)."""
    vocab = logits.size(-1)
    ks = [k] if isinstance(k, int) else list(k)
    ks = [k if 0 < k < vocab else vocab for k in ks]
    if min(ks) == vocab:
        return logits
    top = logits.topk(max(ks), dim=-1).values
    wanted = torch.tensor(ks, device=logits.device).view(-1, 1).expand(logits.size(0), 1)
    kth = top.gather(1, (wanted - 1).clamp(max=top.size(1) - 1))
    kth = kth.masked_fill(wanted == vocab, float("-inf"))  # rows without a top-k keep everything
    return logits.masked_fill(logits < kth, float("-inf"))


TOP_P_SHORTLIST = 256  # most likely tokens examined before sorting a whole vocabulary


def keep_top_p(logits: torch.Tensor, p: float | Sequence[float]) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p (always the most likely one), p for
    every row or one per row (1 or more: all). The probabilities are the softmax of `logits` as given: after top-k,
    the nucleus is taken over the renormalised top-k."""
    ps = [p] if isinstance(p, (int, float)) else list(p)
    if min(ps) >= 1.0:
        return logits
    # a row without top-p never drops a token, even where rounding brings the mass before it to 1
    limit = torch.tensor([q if q < 1.0 else float("inf") for q in ps], device=logits.device).view(-1, 1)
    # Sorting 32k logits per token on a CPU costs more than a small model's forward pass, and the nucleus is nearly
    # always within the few hundred most likely tokens: rank those, and sort everything only when they fall short
    # of p. Elsewhere the whole sort is cheap and checking the shortlist would wait for the device.
    probs = logits.softmax(dim=-1)
    k = min(TOP_P_SHORTLIST, logits.size(-1))
    ranked, order = probs.topk(k, dim=-1)  # descending
    short = logits.device.type != "cpu" or bool((ranked.sum(dim=-1, keepdim=True) < limit).any())
    if k < logits.size(-1) and short:
        ranked, order = probs.sort(dim=-1, descending=True)
    drop = ranked.cumsum(dim=-1) - ranked >= limit  # the tokens before this one already reach p
    drop[:, 0] = False
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, ~drop)
    return logits.masked_fill(~keep, float("-inf"))


def load_decoder(path, decode: DecodeConfig, **options):
    """(model, tokenizer, raw config) of `load_model`, on `decode`'s device, in its dtype, compiled if it says so.
    `options` go to load_model (tokenizer_path; Hugging Face attn_implementation)."""
    device = pick_device(decode.device)
    dtype = decoding_dtype(decode.dtype, device)
    model, tokenizer, raw = load_model(path, device=device, **options)
    if dtype != "float32" or decode.compile:
        model = fast_decoder(model, dtype=dtype, compile=decode.compile)
    return model, tokenizer, raw


def fast_decoder(model, dtype: str = "float32", compile: bool = False):
    """The model ready for fast decoding: weights cast to `dtype`, and optionally its forward compiled.

    Decoding one token reads every weight once, so at small batch sizes speed is memory traffic: bfloat16 weights
    halve it (logits then differ from fp32 by bf16 rounding, ~1e-2), and `int8` (weight-only, a scale per output row,
    see talelab.models.quantize) quarters it for the linear layers, whose one-row bf16 kernel on CPU is no faster
    than fp32's. `compile` uses TorchInductor with frozen weights, which fuses the elementwise work between matmuls
    and pre-packs weights for oneDNN (the bf16 matmuls need the packing to beat fp32 on CPU); the first call
    compiles for 20-60 s, so it pays off for long generations or many stories. Returns a model to pass to
    `generate` / `generate_batch`; do not train it.
    """
    if dtype == "int8":
        decoding_dtype(dtype, next(model.parameters()).device)  # refuses a CUDA model: the kernel is the CPU's
        model = quantize_int8(model)
    else:
        model = model.to(getattr(torch, dtype)).eval()
    if compile:  # dynamic: one graph serves every prompt length and cache position
        # Dynamo keeps its compiled graphs per code object, so every compiled model in the process shares
        # Transformer.forward's budget of 8; a few models x batch sizes (1, beams, streams) would overflow it and
        # silently fall back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        model = torch.compile(model, dynamic=True, options={"freezing": True})
    return model


def pick(logits: torch.Tensor, configs: Sequence[SamplingConfig], uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row (rows,) from penalised logits, under each row's own settings (or one config for every
    row): argmax at temperature 0, else temperature, top-k, top-p over the renormalised top-k, and a draw at the
    row's uniform (rows, 1). Every decoding path samples here, so a seed and settings give the same story alone, in
    a batch, from generate, eval, serve or prefs."""
    greedy = logits.argmax(dim=-1)
    temperatures = [c.temperature for c in configs]
    if max(temperatures) == 0:
        return greedy
    temperature = torch.tensor(temperatures, device=logits.device).view(-1, 1)
    scaled = logits / temperature.clamp(min=1e-6)
    filtered = keep_top_p(keep_top_k(scaled, [c.top_k for c in configs]), [c.top_p for c in configs])
    sampled = draw(filtered.softmax(dim=-1), uniforms.to(logits.device))
    return sampled if min(temperatures) > 0 else torch.where(temperature.squeeze(1) == 0, greedy, sampled)


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row by inverting the cumulative distribution at a uniform draw (rows, 1).

    torch.multinomial draws an exponential variate per vocabulary entry (~0.6 ms for 32k on a CPU core, more than a
    small model's whole forward pass); one uniform per row is all inverse-CDF sampling needs. Zero-probability
    tokens are never chosen: the first cumulative sum to reach the draw belongs to a token with mass.
    """
    cumulative = probs.cumsum(dim=-1)
    return (cumulative < uniforms * cumulative[:, -1:]).sum(dim=-1).clamp(max=probs.size(-1) - 1)


@torch.no_grad()
def sample(model, prompt_ids: list[int], config: SamplingConfig, eos_id: int | None,
           on_token: Callable[[int], None] | None = None) -> list[list[int]]:
    """`num_samples` greedy or sampled continuations, decoded side by side as one batch."""
    steps, generator = start(model, prompt_ids, config)
    n, stop = config.num_samples, (eos_id if config.stop_at_eos else None)
    tokens = []
    with evaluating(model):
        logits, cache = prefill(model, prompt_ids, n)
        present = seen_tokens(prompt_ids, n, config, logits.size(-1), logits.device)
        finished = torch.zeros(n, dtype=torch.bool, device=logits.device)
        for step in range(steps):
            uniforms = torch.rand(n, 1, generator=generator)
            token = pick(penalize_repeats(logits, present, config.repetition_penalty), [config], uniforms)
            if stop is not None:
                token = token.masked_fill(finished, stop)  # finished streams are padded with eos until all are
                finished |= token == stop
            tokens.append(token)
            if on_token is not None and (first := int(token[0])) != stop:
                on_token(first)
            if step == steps - 1 or (stop is not None and bool(finished.all())):
                break  # no forward pass for a token that nothing will follow
            if present is not None:
                present.scatter_(1, token[:, None], True)
            logits, _ = model(token[:, None], cache=cache, start=len(prompt_ids) + step)
            logits = logits[:, -1].float()
    rows = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(n)]
    return [row[:row.index(stop)] if stop in row else row for row in rows]


@torch.no_grad()
def beam_search(model, prompt_ids: list[int], config: SamplingConfig, eos_id: int | None,
                on_token: Callable[[int], None] | None = None) -> list[list[int]]:
    """The `num_samples` best of `num_beams` hypotheses, ranked by summed log-prob / length**length_penalty.

    With `beam_sample` (and temperature > 0) the candidates are drawn from the softmax of the beam scores, after
    repetition penalty and temperature; top-k and top-p do not apply to beams.
    """
    steps, generator = start(model, prompt_ids, config)
    if steps == 0:
        return [[] for _ in range(config.num_samples)]
    beams, stop, lp = config.num_beams, (eos_id if config.stop_at_eos else None), config.length_penalty
    sampled = config.beam_sample and config.temperature > 0
    done: list[tuple[float, list[int]]] = []  # (normalised score, tokens), best first, at most `beams`

    def finish(tokens: list[int], score: float, length: int) -> None:
        done.append((score / length ** lp, tokens))
        done.sort(key=lambda hypothesis: -hypothesis[0])  # stable: of equal scores the earlier one stays first
        del done[beams:]

    with evaluating(model):
        logits, cache = prefill(model, prompt_ids, 1)  # one running beam at first: no duplicates to suppress
        vocab, device = logits.size(-1), logits.device
        present = seen_tokens(prompt_ids, 1, config, vocab, device)
        scores = torch.zeros(1, device=device)  # summed log-probs of the running beams
        running: list[list[int]] = [[]]
        for step in range(steps):
            logits = penalize_repeats(logits, present, config.repetition_penalty)
            if sampled:
                logits = logits / config.temperature
            log_probs = logits.log_softmax(dim=-1)
            # 2 * beams candidates: even if half of them end in eos, `beams` remain to continue
            k = min(2 * beams, log_probs.numel())
            if sampled:
                candidates = (scores[:, None] + log_probs).view(-1)  # (beams * vocab,)
                probs = candidates.softmax(dim=-1)
                index = torch.multinomial(probs.cpu(), min(k, int((probs > 0).sum())), generator=generator)
                index = index.to(probs.device)
                top, order = candidates[index].sort(descending=True)
                index = index[order]
            else:
                # the best k of beams x vocab are among each beam's own best k: rank those few (a quarter of the
                # time of one topk over all 128k candidates at 4 beams and a 32k vocabulary)
                row_best, row_index = log_probs.topk(min(k, vocab), dim=-1)
                top, order = (scores[:, None] + row_best).view(-1).topk(k)
                index = order // row_best.size(1) * vocab + row_index.view(-1)[order]
            kept = []  # (beam, token, score) of the next running beams, best first
            for rank, (score, i) in enumerate(zip(top.tolist(), index.tolist())):
                beam, token = divmod(i, vocab)
                if token != stop:
                    kept.append((beam, token, score))
                elif rank < beams:  # as in Hugging Face: an eos below the best `beams` candidates is ignored
                    finish(running[beam], score, len(running[beam]) + 1)  # the eos counts in the length
                if len(kept) == beams:
                    break
            running = [running[beam] + [token] for beam, token, _ in kept]
            scores = torch.tensor([score for _, _, score in kept], device=device)
            if not running or step == steps - 1:
                break
            # log-probs only lower a sum; the longest (lp > 0) or the current (lp <= 0) length divides it best
            best_possible = kept[0][2] / (steps if lp > 0 else step + 1) ** lp
            if len(done) == beams and best_possible <= done[-1][0]:
                break
            index = torch.tensor([beam for beam, _, _ in kept], device=device)
            cache.reorder(index, filled=len(prompt_ids) + step)
            token = torch.tensor([token for _, token, _ in kept], device=device)
            if present is not None:
                present = present[index].scatter_(1, token[:, None], True)
            logits, _ = model(token[:, None], cache=cache, start=len(prompt_ids) + step)
            logits = logits[:, -1].float()
    for tokens, score in zip(running, scores.tolist()):  # unfinished beams compete too (they lose if stopped early)
        finish(tokens, score, len(tokens))
    best = [tokens for _, tokens in done[:config.num_samples]]
    if on_token is not None:  # the best beam is known only at the end
        for token in best[0]:
            on_token(token)
    return best


def generate(model, prompt_ids: list[int], config: SamplingConfig, eos_id: int | None,
             on_token: Callable[[int], None] | None = None) -> list[list[int]]:
    """`config.num_samples` lists of new token ids continuing `prompt_ids`, without the prompt and the eos.

    Beam search when `num_beams > 1`, else sampling (greedy at temperature 0). `on_token` receives the tokens of the
    first story as they are chosen (beam search: at the end), e.g. to print them.
    """
    search = beam_search if config.num_beams > 1 else sample
    return search(model, prompt_ids, config, eos_id, on_token)


def generate_text(model, tokenizer, config: SamplingConfig, stream: bool = False, out=None) -> list[str]:
    """Stories (prompt included) after bos + `config.prompt`; `stream` writes the first to `out` as it grows."""
    out = sys.stdout if out is None else out  # looked up at call time: tests and notebooks swap sys.stdout
    prompt_ids = tokenizer.encode(config.prompt, bos=True)
    on_token = None
    if stream:
        text = tokenizer.stream()
        out.write("".join(text.push(i) for i in prompt_ids))

        def on_token(token_id: int) -> None:
            out.write(text.push(token_id))
            out.flush()

    sequences = generate(model, prompt_ids, config, tokenizer.eos_id, on_token)
    if stream:
        out.write(text.flush() + "\n")
        out.flush()
    return [tokenizer.decode(prompt_ids + ids) for ids in sequences]


@dataclass
class Generated:
    """One row of `generate_batch`: new tokens, why it ended, and the top alternatives behind each token."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop": eos or the caller said so; "length": max_new_tokens or the context
    alternatives: list[list[tuple[int, float]]] = field(default_factory=list)


@torch.no_grad()
def generate_batch(model, prompts: list[list[int]], configs: list[SamplingConfig], eos_ids: int | None | list,
                   on_token: Callable[[int, int], bool | None] | None = None,
                   top_alternatives: int = 0) -> list[Generated]:
    """Continue prompts of different lengths together, each under its own sampling settings.

    Prompts are left-padded into one batch that shares every forward pass; each row keeps its own positions, so
    its tokens match a run on its own (exactly for greedy). `on_token(row, token)` streams each new token and may
    return True to end that row (e.g. a stop string). Beam search is not batched: use `generate`.
    """
    rows = len(prompts)
    eos = eos_ids if isinstance(eos_ids, list) else [eos_ids] * rows
    limits, generators = [], []
    for prompt, config in zip(prompts, configs):
        steps, generator = start(model, prompt, config)
        limits.append(steps)
        generators.append(generator)
    param = next(model.parameters())
    device, longest = param.device, max(len(p) for p in prompts)
    pads = [longest - len(p) for p in prompts]
    total = longest + max(limits)
    cache = model.new_cache(rows, device, param.dtype, length=total)
    key_mask = torch.zeros(rows, total, dtype=torch.bool, device=device)
    idx = torch.zeros(rows, longest, dtype=torch.long, device=device)
    for r, prompt in enumerate(prompts):
        idx[r, pads[r]:] = torch.tensor(prompt, device=device)
        key_mask[r, pads[r]:longest] = True
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    positions = (torch.arange(longest, device=device) - torch.tensor(pads, device=device)[:, None]).clamp(min=0)
    penalties = torch.tensor([[c.repetition_penalty] for c in configs], device=device)
    results = [Generated() for _ in range(rows)]
    active = [limit > 0 for limit in limits]
    with evaluating(model):
        logits, _ = model(idx, cache=cache, positions=positions, key_mask=key_mask[:, :longest])
        logits = logits[:, -1].float()
        present = torch.zeros(rows, logits.size(-1), dtype=torch.bool, device=device)
        for r, prompt in enumerate(prompts):
            present[r, prompt] = True
        for step in range(max(limits)):
            logits = penalize_repeats(logits, present, penalties)  # (rows, 1) penalties
            # one uniform per row from that row's own generator: a request's seed fixes its story in any batch
            uniforms = torch.stack([torch.rand(1, generator=g) for g in generators])
            token = pick(logits, configs, uniforms)
            if top_alternatives:
                top = logits.softmax(dim=-1).topk(top_alternatives)
                top_ids, top_probs = top.indices.tolist(), top.values.tolist()
            chosen = token.tolist()  # one wait for the device per step, not one per row
            for r in range(rows):
                if not active[r]:
                    continue
                t = chosen[r]
                if t == eos[r] and configs[r].stop_at_eos:
                    results[r].finish_reason, active[r] = "stop", False
                    continue
                results[r].tokens.append(t)
                if top_alternatives:
                    results[r].alternatives.append(list(zip(top_ids[r], top_probs[r])))
                if on_token is not None and on_token(r, t):
                    results[r].finish_reason, active[r] = "stop", False
                elif len(results[r].tokens) >= limits[r]:
                    active[r] = False
            if not any(active):
                break
            present.scatter_(1, token[:, None], True)
            key_mask[:, longest + step] = True
            # finished rows ride along until the batch ends; clamping keeps their (ignored) positions in range
            positions = (lengths + step).clamp(max=model.config.context_length - 1)[:, None]
            logits, _ = model(token[:, None], cache=cache, start=longest + step, positions=positions,
                              key_mask=key_mask[:, :longest + step + 1])
            logits = logits[:, -1].float()
    return results
